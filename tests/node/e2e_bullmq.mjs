// BullMQ as the application in the end-to-end tests and the demo.
// Usage: node e2e_bullmq.mjs '<json command>' ; prints one JSON line.
//   {op: "fill", url, prefix?, queue, n}            -> {added, at}   n waiting jobs, no worker;
//                                                     at: epoch seconds when they were in
//   {op: "drain", url, prefix?, queue, concurrency?} -> {processed}  a worker that runs until the
//                                                     queue is empty, then exits (the remediation)
//   {op: "counts", url, prefix?, queue}             -> {wait, active, paused, ...}
import { Queue, Worker } from "bullmq";

const cmd = JSON.parse(process.argv[2]);
const url = new URL(cmd.url);
const connection = { host: url.hostname, port: Number(url.port), db: Number(url.pathname.slice(1) || 0) };
const prefix = cmd.prefix ?? "bull";
const queue = new Queue(cmd.queue, { connection, prefix });
const STATES = ["wait", "paused", "prioritized", "active", "delayed", "completed", "failed"];
let out;

async function left() {
  const c = await queue.getJobCounts("wait", "paused", "prioritized", "active");
  return c.wait + c.paused + c.prioritized + c.active;
}

if (cmd.op === "fill") {
  const jobs = Array.from({ length: cmd.n }, (_, i) => ({ name: "scrape", data: { i } }));
  await queue.addBulk(jobs);
  out = { added: cmd.n, at: Date.now() / 1000 };
} else if (cmd.op === "drain") {
  let processed = 0;
  const worker = new Worker(cmd.queue, async () => { processed += 1; },
    { connection, prefix, concurrency: cmd.concurrency ?? 50 });
  await worker.waitUntilReady();
  while (await left() > 0) await new Promise((r) => setTimeout(r, 20));
  await worker.close();
  out = { processed };
} else if (cmd.op === "counts") {
  out = await queue.getJobCounts(...STATES);
} else {
  throw new Error(`unknown op ${cmd.op}`);
}
await queue.close();
console.log(JSON.stringify(out));
