// The Headroom side: submits N jobs to POST /v1/jobs from `concurrency` keep-alive
// connections, waits until none is queued, running or retry_pending, then reads every job
// back to check that each succeeded and to take the time of the last completion.
// Prints one JSON line (see ../README.md).
'use strict';

const { Pool } = require('undici');
const c = require('./common.cjs');

const args = c.parseArgs({
  url: 'http://127.0.0.1:7878', // Headroom
  'mock-url': '', // the upstream, to count the calls it received (GET /_mock/stats)
  upstream: 'up',
  n: 20000,
  warmup: 1000,
  concurrency: 64,
  'poll-ms': 20,
  'server-pid': 0, // Headroom's pid, for its CPU time
  'mock-pid': 0, // the upstream's pid, for its CPU time
  'timeout-s': 600,
  verify: 1, // 0: skip reading the jobs back (PROFILE=1); the end is then when the client saw it
});

const api = new Pool(args.url, {
  connections: args.concurrency,
  pipelining: 1,
  keepAliveTimeout: 60_000,
});
const mock = args['mock-url'] ? new Pool(args['mock-url'], { connections: 2 }) : null;

async function call(pool, method, path, body) {
  const r = await pool.request({
    method,
    path,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.body.text();
  return { status: r.statusCode, json: text ? JSON.parse(text) : null, text };
}

function job(i) {
  return {
    upstream: args.upstream,
    request: { method: 'POST', path: '/x', body: { n: i } },
  };
}

/** Whether no job is waiting or running (one cheap page of each unfinished status). */
async function allFinished() {
  for (const status of ['queued', 'running', 'retry_pending']) {
    const r = await call(api, 'GET', `/v1/jobs?status=${status}&limit=1`);
    if (r.status !== 200) throw new Error(`GET /v1/jobs?status=${status}: ${r.status} ${r.text}`);
    if (r.json.jobs.length > 0) return false;
  }
  return true;
}

async function waitFinished(deadline) {
  for (;;) {
    if (await allFinished()) return c.wallMs();
    if (Date.now() > deadline) throw new Error('jobs did not finish in time');
    await c.sleep(args['poll-ms']);
  }
}

/** Every job of a status, page by page (500 a page): id → job. */
async function listAll(status) {
  const out = new Map();
  let cursor = null;
  for (;;) {
    const q = `/v1/jobs?status=${status}&limit=500${cursor ? `&cursor=${cursor}` : ''}`;
    const r = await call(api, 'GET', q);
    if (r.status !== 200) throw new Error(`GET ${q}: ${r.status} ${r.text}`);
    for (const j of r.json.jobs) out.set(j.id, j);
    if (!r.json.next_cursor) return out;
    cursor = r.json.next_cursor;
  }
}

async function mockAccepted() {
  if (!mock) return null;
  const r = await call(mock, 'GET', '/_mock/stats');
  return r.json.accepted;
}

async function phase(n, offset) {
  const ids = new Array(n);
  const sub = await c.submitAll(n, args.concurrency, async (i) => {
    const r = await call(api, 'POST', '/v1/jobs', job(offset + i));
    if (r.status !== 202) throw new Error(`POST /v1/jobs: ${r.status} ${r.text}`);
    ids[i] = r.json.id;
  });
  const observedEnd = await waitFinished(Date.now() + args['timeout-s'] * 1000);
  return { ids, sub, observedEnd };
}

async function main() {
  const deadline = Date.now() + args['timeout-s'] * 1000;
  if (args.warmup > 0) await phase(args.warmup, 0);
  if (!(await allFinished())) await waitFinished(deadline);
  const mockBefore = await mockAccepted();

  const cpu0 = {
    server: c.procCpuMs(args['server-pid']),
    mock: c.procCpuMs(args['mock-pid']),
    self: c.selfCpuMs(),
    machine: c.machineBusyMs(),
  };
  const { ids, sub, observedEnd } = await phase(args.n, args.warmup);
  const cpu1 = {
    server: c.procCpuMs(args['server-pid']),
    mock: c.procCpuMs(args['mock-pid']),
    self: c.selfCpuMs(),
    machine: c.machineBusyMs(),
  };
  const mockAfter = await mockAccepted();

  // Untimed: read every job back.
  const succeeded = args.verify ? await listAll('succeeded') : new Map();
  const failed = args.verify ? await listAll('failed') : new Map();
  let ok = 0;
  let lastDone = 0;
  let badResponse = 0;
  for (const id of ids) {
    const j = succeeded.get(id);
    if (!j) continue;
    ok++;
    lastDone = Math.max(lastDone, Date.parse(j.updated_at));
    if (!j.response || j.response.status !== 200) badResponse++;
  }
  const measuredFailed = ids.filter((id) => failed.has(id)).length;

  const lat = c.latencySummary(sub.latencies);
  const submitS = (sub.lastAck - sub.start) / 1000;
  const e2eS = ((args.verify ? lastDone : observedEnd) - sub.start) / 1000;
  const out = {
    system: 'headroom',
    mode: `POST /v1/jobs, ${args.concurrency} connections`,
    n: args.n,
    warmup: args.warmup,
    concurrency: args.concurrency,
    submit_s: submitS,
    submit_rate: args.n / submitS,
    submit_p50_ms: lat.p50,
    submit_p99_ms: lat.p99,
    submit_max_ms: lat.max,
    e2e_s: e2eS,
    e2e_rate: args.n / e2eS,
    observed_e2e_s: (observedEnd - sub.start) / 1000,
    succeeded: ok,
    failed: measuredFailed,
    non_200_responses: badResponse,
    upstream_calls: mockAfter === null ? null : mockAfter - mockBefore,
    cpu_ms: {
      system: cpu1.server - cpu0.server, // Headroom: API, store and dispatcher
      upstream: cpu1.mock - cpu0.mock,
      loadgen: cpu1.self - cpu0.self,
      machine: cpu1.machine - cpu0.machine,
    },
  };
  process.stdout.write(JSON.stringify(out) + '\n');
  await api.close();
  if (mock) await mock.close();
  if (args.verify && ok !== args.n) {
    console.error(`only ${ok} of ${args.n} jobs succeeded (${measuredFailed} failed)`);
    process.exit(2);
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e);
  process.exit(1);
});
