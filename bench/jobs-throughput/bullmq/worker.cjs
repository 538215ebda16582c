// The BullMQ worker process (forked by bullmq.cjs): each job is the same HTTP call a Headroom
// job makes (POST {base}/x with the job's JSON body, on keep-alive connections), and the
// answer (status, headers, body) is the job's return value, stored in Redis as Headroom
// stores it in SQLite. Reports to the parent over IPC when a given number have completed.
'use strict';

const { Worker } = require('bullmq');
const { Pool } = require('undici');
const c = require('./common.cjs');

const args = c.parseArgs({
  queue: 'bench',
  'redis-host': '127.0.0.1',
  'redis-port': 6379,
  'redis-db': 15,
  'upstream-url': 'http://127.0.0.1:9090',
  concurrency: 64,
});

const upstream = new Pool(args['upstream-url'], {
  connections: args.concurrency,
  pipelining: 1,
  keepAliveTimeout: 60_000,
});

let completed = 0;
let failed = 0;
let lastCompletedAt = 0; // wall ms of the last 'completed' event
let lastFinishedOn = 0; // the largest finishedOn BullMQ stamped
let expect = Infinity;

async function processor(job) {
  const r = await upstream.request({
    method: 'POST',
    path: '/x',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(job.data.request.body),
  });
  const body = await r.body.text();
  if (r.statusCode < 200 || r.statusCode >= 300) {
    throw new Error(`the upstream answered ${r.statusCode}`);
  }
  return { status: r.statusCode, headers: r.headers, body };
}

const worker = new Worker(args.queue, processor, {
  connection: { host: args['redis-host'], port: args['redis-port'], db: args['redis-db'] },
  concurrency: args.concurrency,
  autorun: false,
});

function check() {
  if (completed + failed >= expect) {
    process.send({
      type: 'reached',
      completed,
      failed,
      lastCompletedAt,
      lastFinishedOn,
      cpuMs: c.selfCpuMs(),
    });
    expect = Infinity;
  }
}

worker.on('completed', (job) => {
  completed++;
  lastCompletedAt = c.wallMs();
  if (job.finishedOn > lastFinishedOn) lastFinishedOn = job.finishedOn;
  check();
});
worker.on('failed', () => {
  failed++;
  check();
});
worker.on('error', (e) => console.error('worker error:', e));

process.on('message', async (m) => {
  if (m.type === 'expect') {
    expect = m.total;
    check();
  } else if (m.type === 'cpu') {
    process.send({ type: 'cpu', cpuMs: c.selfCpuMs() });
  } else if (m.type === 'stop') {
    await worker.close();
    await upstream.close();
    process.exit(0);
  }
});

(async () => {
  await worker.waitUntilReady();
  worker.run().catch((e) => {
    console.error('worker stopped:', e);
    process.exit(1);
  });
  process.send({ type: 'ready', pid: process.pid });
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
