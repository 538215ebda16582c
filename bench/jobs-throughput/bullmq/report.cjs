// Reads the runs (one JSON object a line, as run.sh collects them) and prints Markdown:
// a table of medians per system and submission mode, then every run.
'use strict';

const fs = require('node:fs');
const os = require('node:os');

const cpus = os.cpus().length;

const file = process.argv[2];
const runs = fs
  .readFileSync(file, 'utf8')
  .split('\n')
  .filter((l) => l.trim())
  .map((l) => JSON.parse(l));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const int = (x) => Math.round(x).toLocaleString('en-US');
const ms = (x) => (x < 10 ? x.toFixed(1) : x.toFixed(0)) + ' ms';
const us = (x) => Math.round(x) + ' µs';

function store(r) {
  if (r.system === 'headroom') return 'SQLite (WAL, synchronous=NORMAL)';
  if (/appendfsync everysec/.test(r.redis || '')) return 'Redis, AOF (appendfsync everysec)';
  return 'Redis, no persistence';
}

const groups = new Map();
for (const r of runs) {
  const key = `${r.system}\t${store(r)}\t${r.mode}`;
  if (!groups.has(key)) groups.set(key, []);
  groups.get(key).push(r);
}

function note(r) {
  if (r.system === 'headroom') {
    return 'committed to the WAL: survives kill -9, not a power loss';
  }
  if (/appendfsync everysec/.test(r.redis || '')) {
    return 'written to the AOF: survives kill -9, not a power loss';
  }
  return 'in memory only: lost if Redis stops';
}

console.log(
  '| system | store | submission | N | jobs/s end to end | submit rate (jobs/s) | submit p50 / p99 | ' +
    'machine CPU busy | CPU per job: system / upstream / load generator | runs | at the acknowledgement |',
);
console.log('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|');
for (const [, rs] of groups) {
  const r0 = rs[0];
  const perJob = (k) => median(rs.map((r) => (r.cpu_ms[k] * 1000) / r.n));
  const busy = median(rs.map((r) => (100 * r.cpu_ms.machine) / (r.observed_e2e_s * 1000 * cpus)));
  const e2e = rs.map((r) => r.e2e_rate);
  console.log(
    `| ${r0.system === 'headroom' ? 'Headroom' : 'BullMQ'} | ${store(r0)} | ${r0.mode} | ${int(r0.n)} | ` +
      `**${int(median(e2e))}** (${int(Math.min(...e2e))}–${int(Math.max(...e2e))}) | ` +
      `${int(median(rs.map((r) => r.submit_rate)))} | ` +
      `${ms(median(rs.map((r) => r.submit_p50_ms)))} / ${ms(median(rs.map((r) => r.submit_p99_ms)))} | ` +
      `${Math.min(100, Math.round(busy))} % | ` +
      `${us(perJob('system'))} / ${us(perJob('upstream'))} / ${us(perJob('loadgen'))} | ` +
      `${rs.length} | ${note(r0)} |`,
  );
}
console.log();
console.log(
  `Machine CPU busy: all processes' CPU time during the measured run ÷ (its duration × ${cpus} CPUs). ` +
    'CPU per job: "system" is Headroom\'s process, or Redis plus the BullMQ worker process; ' +
    '"upstream" the mock; "load generator" the submitting Node process.',
);
console.log();
console.log('<details><summary>every run</summary>');
console.log();
console.log(
  '| round | system | store | submission | jobs/s end to end | end to end (s) | seen by the client (s) | ' +
    'submit (s) | submit p50 / p99 / max | succeeded | upstream calls | system CPU (ms) | machine busy (ms) | other CPU (%) |',
);
console.log('|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const r of runs) {
  console.log(
    `| ${r.round} | ${r.system} | ${store(r)} | ${r.mode} | ${int(r.e2e_rate)} | ${r.e2e_s.toFixed(3)} | ` +
      `${r.observed_e2e_s.toFixed(3)} | ${r.submit_s.toFixed(3)} | ` +
      `${ms(r.submit_p50_ms)} / ${ms(r.submit_p99_ms)} / ${ms(r.submit_max_ms)} | ${r.succeeded} | ` +
      `${r.upstream_calls} | ${int(r.cpu_ms.system)} | ${int(r.cpu_ms.machine)} | ${r.other_pct} |`,
  );
}
console.log();
console.log('</details>');
