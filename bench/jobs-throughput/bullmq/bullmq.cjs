// The BullMQ side: flushes a dedicated Redis database, starts the worker process
// (worker.cjs), warms up, then adds N jobs and measures first add -> last completion.
// `--mode add`: `queue.add` from `concurrency` concurrent callers (as Headroom's submits);
// `--mode bulk`: `queue.addBulk` of `chunk` jobs, `concurrency` calls at once.
// Prints one JSON line (see ../README.md).
'use strict';

const { fork } = require('node:child_process');
const path = require('node:path');
const { Queue } = require('bullmq');
const IORedis = require('ioredis');
const { Pool } = require('undici');
const c = require('./common.cjs');

const args = c.parseArgs({
  mode: 'add',
  queue: 'bench',
  'redis-host': '127.0.0.1',
  'redis-port': 6379,
  'redis-db': 15,
  'upstream-url': 'http://127.0.0.1:9090',
  'mock-pid': 0,
  n: 20000,
  warmup: 1000,
  concurrency: 64, // concurrent add calls (add) or addBulk calls (bulk)
  'worker-concurrency': 64,
  chunk: 500, // jobs per addBulk call
  'timeout-s': 600,
  redis: 'no persistence', // how this Redis keeps data, for the report
});
if (!['add', 'bulk'].includes(args.mode)) throw new Error('--mode is add or bulk');

const connection = { host: args['redis-host'], port: args['redis-port'], db: args['redis-db'] };
// The same defaults as Headroom's default queue: 5 attempts, exponential backoff.
const jobOpts = { attempts: 5, backoff: { type: 'exponential', delay: 1000 } };

function job(i) {
  return { upstream: 'up', request: { method: 'POST', path: '/x', body: { n: i } } };
}

async function redisCpuMs(redis) {
  const info = await redis.info('cpu');
  const get = (k) => Number((info.match(new RegExp(`^${k}:([0-9.]+)`, 'm')) || [])[1]);
  return (get('used_cpu_sys') + get('used_cpu_user')) * 1000;
}

async function mockAccepted(mock) {
  const r = await mock.request({ method: 'GET', path: '/_mock/stats' });
  return JSON.parse(await r.body.text()).accepted;
}

async function main() {
  const admin = new IORedis({ ...connection, maxRetriesPerRequest: null });
  await admin.flushdb();
  const queue = new Queue(args.queue, { connection });
  await queue.waitUntilReady();
  const mock = new Pool(args['upstream-url'], { connections: 2 });

  const worker = fork(path.join(__dirname, 'worker.cjs'), [
    '--queue', args.queue,
    '--redis-host', connection.host,
    '--redis-port', String(connection.port),
    '--redis-db', String(connection.db),
    '--upstream-url', args['upstream-url'],
    '--concurrency', String(args['worker-concurrency']),
  ]);
  const inbox = [];
  const waiters = [];
  worker.on('message', (m) => {
    const w = waiters.findIndex((x) => x.type === m.type);
    if (w >= 0) waiters.splice(w, 1)[0].resolve(m);
    else inbox.push(m);
  });
  worker.on('exit', (code) => {
    if (code !== 0) {
      console.error(`the worker exited with ${code}`);
      process.exit(1);
    }
  });
  const receive = (type) => {
    const i = inbox.findIndex((m) => m.type === type);
    if (i >= 0) return Promise.resolve(inbox.splice(i, 1)[0]);
    return new Promise((resolve) => waiters.push({ type, resolve }));
  };
  const withTimeout = (p) => {
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('jobs did not finish in time')), args['timeout-s'] * 1000);
    });
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  };
  const { pid: workerPid } = await receive('ready');

  async function phase(n, offset, total) {
    const reached = receive('reached');
    let sub;
    if (args.mode === 'add') {
      sub = await c.submitAll(n, args.concurrency, (i) =>
        queue.add('call', job(offset + i), jobOpts),
      );
    } else {
      sub = await c.submitChunks(n, args.chunk, args.concurrency, (from, to) => {
        const jobs = [];
        for (let i = from; i < to; i++) jobs.push({ name: 'call', data: job(offset + i), opts: jobOpts });
        return queue.addBulk(jobs);
      });
    }
    worker.send({ type: 'expect', total });
    const done = await withTimeout(reached);
    return { sub, done, observedEnd: c.wallMs() };
  }

  if (args.warmup > 0) await phase(args.warmup, 0, args.warmup);

  const mockBefore = await mockAccepted(mock);
  worker.send({ type: 'cpu' });
  const workerCpu0 = (await receive('cpu')).cpuMs;
  const cpu0 = {
    redis: await redisCpuMs(admin),
    mock: c.procCpuMs(args['mock-pid']),
    self: c.selfCpuMs(),
    machine: c.machineBusyMs(),
  };
  const { sub, done, observedEnd } = await phase(args.n, args.warmup, args.warmup + args.n);
  const cpu1 = {
    redis: await redisCpuMs(admin),
    mock: c.procCpuMs(args['mock-pid']),
    self: c.selfCpuMs(),
    machine: c.machineBusyMs(),
  };
  const workerCpu1 = done.cpuMs;
  const mockAfter = await mockAccepted(mock);

  // Untimed: the queue's own counts.
  const counts = await queue.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed');

  const lat = c.latencySummary(sub.latencies);
  const submitS = (sub.lastAck - sub.start) / 1000;
  const e2eS = (done.lastFinishedOn - sub.start) / 1000;
  const out = {
    system: 'bullmq',
    mode:
      args.mode === 'add'
        ? `queue.add, ${args.concurrency} at once`
        : `queue.addBulk of ${args.chunk}, ${args.concurrency} calls at once`,
    redis: args.redis,
    n: args.n,
    warmup: args.warmup,
    concurrency: args['worker-concurrency'],
    submit_s: submitS,
    submit_rate: args.n / submitS,
    submit_p50_ms: lat.p50, // per add call (bulk: per addBulk call)
    submit_p99_ms: lat.p99,
    submit_max_ms: lat.max,
    e2e_s: e2eS,
    e2e_rate: args.n / e2eS,
    observed_e2e_s: (done.lastCompletedAt - sub.start) / 1000,
    succeeded: counts.completed - args.warmup,
    failed: counts.failed,
    non_200_responses: 0,
    upstream_calls: mockAfter - mockBefore,
    cpu_ms: {
      system: cpu1.redis - cpu0.redis + (workerCpu1 - workerCpu0), // Redis + the worker
      redis: cpu1.redis - cpu0.redis,
      worker: workerCpu1 - workerCpu0,
      upstream: cpu1.mock - cpu0.mock,
      loadgen: cpu1.self - cpu0.self,
      machine: cpu1.machine - cpu0.machine,
    },
  };
  process.stdout.write(JSON.stringify(out) + '\n');

  worker.send({ type: 'stop' });
  await new Promise((r) => worker.once('exit', r));
  await queue.close();
  await mock.close();
  await admin.flushdb();
  await admin.quit();
  if (out.succeeded !== args.n || counts.waiting + counts.active + counts.delayed > 0) {
    console.error(`only ${out.succeeded} of ${args.n} jobs completed: ${JSON.stringify(counts)}`);
    process.exit(2);
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e);
  process.exit(1);
});
