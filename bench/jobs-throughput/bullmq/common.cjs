// Shared by headroom.cjs, bullmq.cjs and worker.cjs: arguments, clocks, percentiles, CPU
// accounting and the closed-loop submitter both sides use.
'use strict';

const fs = require('node:fs');
const os = require('node:os');

/** `--name value` pairs into an object, with defaults; numbers stay strings until asked. */
function parseArgs(defaults) {
  const out = { ...defaults };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const key = a.slice(2);
    if (!(key in defaults)) throw new Error(`unknown option --${key}`);
    const v = argv[++i];
    if (v === undefined) throw new Error(`--${key} needs a value`);
    out[key] = typeof defaults[key] === 'number' ? Number(v) : v;
    if (typeof defaults[key] === 'number' && !Number.isFinite(out[key])) {
      throw new Error(`--${key}: ${v} is not a number`);
    }
  }
  return out;
}

/** Wall-clock milliseconds with sub-millisecond resolution (comparable across processes). */
function wallMs() {
  return performance.timeOrigin + performance.now();
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function latencySummary(latencies) {
  const s = Float64Array.from(latencies).sort();
  return { p50: percentile(s, 50), p99: percentile(s, 99), max: s[s.length - 1] };
}

const CLK_TCK = 100; // Linux USER_HZ; /proc/PID/stat times are in these ticks

/** CPU time (user + system, ms) of a process from /proc, or NaN if it is gone. */
function procCpuMs(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** CPU time (ms) of this process. */
function selfCpuMs() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Busy CPU time (ms) of the whole machine, from /proc/stat. */
function machineBusyMs() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
  const v = line.slice(1).map(Number); // user nice system idle iowait irq softirq steal
  const busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  return (busy * 1000) / CLK_TCK;
}

/**
 * Closed-loop submission: `concurrency` callers each take the next index and await
 * `submitOne(i)` (which resolves once the system acknowledged the job), until `n` are in.
 * Returns the start (wall ms), the time of the last acknowledgement and each call's latency.
 */
async function submitAll(n, concurrency, submitOne) {
  const latencies = new Float64Array(n);
  let next = 0;
  const start = wallMs();
  let lastAck = start;
  async function caller() {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      const t0 = performance.now();
      await submitOne(i);
      latencies[i] = performance.now() - t0;
      lastAck = Math.max(lastAck, wallMs());
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, caller));
  return { start, lastAck, latencies };
}

/** Calls in batches: `chunk` items a call, `concurrency` calls at once. */
async function submitChunks(n, chunk, concurrency, submitChunk) {
  const calls = Math.ceil(n / chunk);
  const r = await submitAll(calls, concurrency, (c) =>
    submitChunk(c * chunk, Math.min(n, (c + 1) * chunk)),
  );
  return r;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function machine() {
  return { cpus: os.cpus().length, model: os.cpus()[0] && os.cpus()[0].model, node: process.version };
}

module.exports = {
  parseArgs,
  wallMs,
  latencySummary,
  procCpuMs,
  selfCpuMs,
  machineBusyMs,
  submitAll,
  submitChunks,
  sleep,
  machine,
};
