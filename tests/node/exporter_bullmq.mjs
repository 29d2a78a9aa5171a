// Fill BullMQ queues the way a BullMQ application does, for the exporter tests and bench.
// Usage: node exporter_bullmq.mjs '<json spec>'
//   spec: {url, prefix?, batch?, hold?, queues: [{name, wait?, prioritized?, delayed?,
//          completed?, failed?, active?, waitingChildren?, paused?}]}
// With hold: true it keeps a named Worker on each queue connected until stdin closes.
import { FlowProducer, Queue, Worker } from "bullmq";

const spec = JSON.parse(process.argv[2]);
const url = new URL(spec.url);
const connection = { host: url.hostname, port: Number(url.port), db: Number(url.pathname.slice(1) || 0) };
const prefix = spec.prefix ?? "bull";
const batch = spec.batch ?? 5000;

async function addMany(queue, count, opts) {
  for (let done = 0; done < count; done += batch) {
    const n = Math.min(batch, count - done);
    const jobs = Array.from({ length: n }, (_, i) => ({ name: "job", data: { i: done + i }, opts }));
    await queue.addBulk(jobs);
  }
}

async function fill(q) {
  const queue = new Queue(q.name, { connection, prefix });
  const finishing = (q.completed ?? 0) + (q.failed ?? 0) + (q.active ?? 0);
  if (finishing > 0) {
    await addMany(queue, finishing, {});
    const worker = new Worker(q.name, null, { connection, prefix, autorun: false });
    const token = "exporter-test";
    for (let i = 0; i < finishing; i++) {
      const job = await worker.getNextJob(token);
      if (i < (q.completed ?? 0)) await job.moveToCompleted("ok", token, false);
      else if (i < (q.completed ?? 0) + (q.failed ?? 0)) await job.moveToFailed(new Error("boom"), token, false);
      // the rest stay active, their lock held by the token
    }
    await worker.close();
  }
  await addMany(queue, q.wait ?? 0, {});
  await addMany(queue, q.prioritized ?? 0, { priority: 5 });
  await addMany(queue, q.delayed ?? 0, { delay: 3_600_000 });
  if (q.waitingChildren) {
    const flow = new FlowProducer({ connection, prefix });
    for (let i = 0; i < q.waitingChildren; i++) {
      await flow.add({ name: "parent", queueName: q.name,
        children: [{ name: "child", queueName: `${q.name}-children` }] });
    }
    await flow.close();
  }
  if (q.paused) await queue.pause();
  await queue.close();
}

for (const q of spec.queues) await fill(q);

if (spec.hold) {
  const workers = spec.queues.map((q) => new Worker(q.name, async () => {}, {
    connection, prefix, name: "holder", autorun: false }));
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  console.log("ready");
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.on("end", resolve));
  await Promise.all(workers.map((w) => w.close()));
}
console.log("done");
