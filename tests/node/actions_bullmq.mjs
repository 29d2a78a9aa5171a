// Fill and read BullMQ queues as a BullMQ application does, for the action tests.
// Usage: node actions_bullmq.mjs '<json command>' ; prints one JSON line.
//   {op: "add", url, prefix?, queue, n, data?, completed?, failed?, active?} -> {ids, finished}
//      adds n waiting jobs, then (like "finish") moves some of them on
//   {op: "finish", url, prefix?, queue, completed?, failed?, active?} -> {ids}
//      takes waiting jobs with a manual Worker and completes/fails them (active: keeps the lock)
//   {op: "read", url, prefix?, queue}                     -> {counts, paused, failed, waiting, completed}
import { Queue, Worker } from "bullmq";

const cmd = JSON.parse(process.argv[2]);
const url = new URL(cmd.url);
const connection = { host: url.hostname, port: Number(url.port), db: Number(url.pathname.slice(1) || 0) };
const prefix = cmd.prefix ?? "bull";
const queue = new Queue(cmd.queue, { connection, prefix });
let out;

async function finish() {
  const worker = new Worker(cmd.queue, null, { connection, prefix, autorun: false });
  const token = "actions-test";
  const ids = [];
  const plan = [...Array(cmd.completed ?? 0).fill("completed"), ...Array(cmd.failed ?? 0).fill("failed"),
    ...Array(cmd.active ?? 0).fill("active")];
  for (const step of plan) {
    const job = await worker.getNextJob(token);
    ids.push(job.id);
    if (step === "completed") await job.moveToCompleted("ok", token, false);
    else if (step === "failed") await job.moveToFailed(new Error("boom"), token, false);
  }
  await worker.close();
  return ids;
}

if (cmd.op === "add") {
  const jobs = Array.from({ length: cmd.n }, (_, i) => ({ name: "scrape", data: { i, ...(cmd.data ?? {}) } }));
  out = { ids: (await queue.addBulk(jobs)).map((j) => j.id) };
  out.finished = await finish();
} else if (cmd.op === "finish") {
  out = { ids: await finish() };
} else if (cmd.op === "read") {
  out = {
    counts: await queue.getJobCounts("wait", "paused", "active", "delayed", "prioritized", "completed", "failed"),
    paused: await queue.isPaused(),
    failed: (await queue.getFailed()).map((j) => j.id),
    waiting: (await queue.getWaiting()).map((j) => j.id),
    completed: (await queue.getCompleted()).map((j) => j.id),
  };
} else {
  throw new Error(`unknown op ${cmd.op}`);
}
await queue.close();
console.log(JSON.stringify(out));
