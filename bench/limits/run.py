#!/usr/bin/env python3
"""Limits that move, stack and cost (issue 13), through real sockets.

Each scenario starts `headroom mock` (a rate-limited upstream with a provider's headers) and
`headroom serve` (embedded SQLite, auth = "none") on loopback ports, drives the proxy with
concurrent callers, reads the mock's counters (`/_mock/stats`) and prints one Markdown row.
Writes nothing into the repository.

    bench/limits/run.py                       # build this tree (release), run every scenario
    HEADROOM_BIN=target/release/headroom bench/limits/run.py
    ONLY=tokens bench/limits/run.py           # the scenarios whose name contains "tokens"

Settings (environment variables): HEADROOM_BIN (unset: `cargo build --release`), ONLY, SCALE
(multiplies every scenario's duration; default 1), KEEP_TMP (1: keep configs and logs).
Standard library only.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCALE = float(os.environ.get("SCALE", "1"))


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, limit=30.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {limit} s")


def binary():
    b = os.environ.get("HEADROOM_BIN")
    if b:
        return b, b
    say("building headroom (release)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "headroom"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "crates"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return os.path.join(target, "release", "headroom"), rev + (" with uncommitted changes" if dirty else "")


class Run:
    """One scenario's processes: the mock and a Headroom server."""

    def __init__(self, bin_path, tmp, name, mock_args, upstream_toml):
        self.dir = os.path.join(tmp, name.replace(" ", "_").replace("/", "_"))
        os.makedirs(self.dir)
        self.mock_port, self.port = free_port(), free_port()
        self.mock = subprocess.Popen(
            [bin_path, "mock", "--listen", f"127.0.0.1:{self.mock_port}", *mock_args],
            stdout=open(os.path.join(self.dir, "mock.log"), "w"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.mock_port}/_mock/stats")
        config = os.path.join(self.dir, "headroom.toml")
        with open(config, "w") as f:
            f.write(f'store = "sqlite://{self.dir}/headroom.db"\nauth = "none"\n'
                    f'listen = "127.0.0.1:{self.port}"\n\n[[upstreams]]\nname = "up"\n'
                    f'base_url = "http://127.0.0.1:{self.mock_port}"\n{upstream_toml}\n')
        self.server = subprocess.Popen(
            [bin_path, "serve", "--config", config],
            stdout=open(os.path.join(self.dir, "serve.log"), "w"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.port}/healthz")
        self.started = time.time()

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mock_port}/_mock/stats") as r:
            return json.load(r)

    def stop(self):
        for p in (self.server, self.mock):
            p.terminate()
        for p in (self.server, self.mock):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.refused = 0  # answered by Headroom itself (problem+json 429/503)
        self.upstream_errors = 0  # the upstream's throttled answer passed on after retries
        self.other = 0
        self.last_done = 0.0

    def add(self, status, problem):
        with self.lock:
            if status == 200:
                self.ok += 1
            elif problem:
                self.refused += 1
            elif status == 429:
                self.upstream_errors += 1
            else:
                self.other += 1
            self.last_done = time.time()


def call(port, path, headers, tally):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/proxy/up{path}", method="POST",
                                 data=b"{}", headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            tally.add(r.status, False)
    except urllib.error.HTTPError as e:
        problem = "problem+json" in (e.headers.get("content-type") or "")
        e.read()
        tally.add(e.code, problem)
    except Exception:
        tally.add(0, False)


def load(port, callers, seconds=None, total=None, headers=None, tokens=False):
    """`callers` threads calling back to back until `seconds` pass or `total` calls are made."""
    tally = Tally()
    counter = {"n": 0}
    lock = threading.Lock()
    end = time.time() + seconds if seconds else None

    def caller(i):
        k = i
        while True:
            with lock:
                if total is not None and counter["n"] >= total:
                    return
                counter["n"] += 1
            if end is not None and time.time() >= end:
                return
            k += callers
            h = dict(headers or {})
            path = "/v1/chat/completions" if tokens else "/contacts"
            if tokens:
                n = 100 + (k * 37) % 201  # 100-300 tokens, spread evenly
                path += f"?tokens={n}"
                if tokens == "stated":
                    h["headroom-cost"] = str(n)
            call(port, path, h, tally)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def whole_windows(per_window, first, last):
    w = per_window[first:last]
    return w if w else [0]


def pct(x):
    return f"{100 * x:.1f} %"


def scenarios():
    s = []

    def limit_halves():
        window, before, after, change_at, seconds = 2, 20, 10, 20 * SCALE, 50 * SCALE
        return dict(
            mock=["--profile", "x-ratelimit-delta", "--limit", str(before), "--window", f"{window}s",
                  "--limit-change-at", f"{change_at}s", "--limit-after", str(after)],
            upstream=f'limits = [{{ quota = {before}, window = "{window}s" }}]',
            load=dict(callers=16, seconds=seconds, headers={"headroom-max-wait": "30s"}),
            measure=lambda st, t, run: changed(st, t, window, change_at, after, seconds))
    s.append(("limit halves (20 -> 10 per 2 s, configured 20, x-ratelimit-delta)", limit_halves))

    def quickstart():
        return dict(
            mock=["--profile", "ietf", "--limit", "100", "--window", "10s"],
            upstream='limits = [{ quota = 100, window = "10s" }, { quota = 250000, window = "1d" }]',
            # The README's flood: bulk calls that may wait a minute.
            load=dict(callers=200, total=200,
                      headers={"headroom-lane": "bulk", "headroom-max-wait": "60s"}),
            measure=lambda st, t, run: {
                "answered 200": f"{t.ok} of 200",
                "refused by Headroom": t.refused,
                "throttled upstream": st["throttled"],
                "calls/s (10-s limit allows 8)": f"{t.ok / max(t.last_done - run.started, 1e-3):.1f}",
            })
    s.append(("Quickstart flood (100 per 10 s + 250,000 per day, 200 at once)", quickstart))

    def tokens(configured, stated):
        limits = 'limits = [{ quota = 3000, window = "2s", unit = "points" }]\n' if configured else ""
        return lambda: dict(
            mock=["--profile", "openai", "--limit", "3000", "--window", "2s"],
            upstream=limits + "cost_from_body = true\nmax_concurrency = 16",
            load=dict(callers=16, seconds=30 * SCALE, tokens="stated" if stated else "learned",
                      headers={"headroom-max-wait": "30s"}),
            measure=lambda st, t, run: metered(st, t, 2, 3000, 30 * SCALE))
    s.append(("tokens (3,000 per 2 s, OpenAI headers), cost stated", tokens(True, True)))
    s.append(("tokens, cost not stated (learned per route, reconciled from usage)", tokens(True, False)))
    s.append(("tokens, no limit configured (learned from headers), cost stated", tokens(False, True)))

    def learned_only():
        seconds = 30 * SCALE
        return dict(
            mock=["--profile", "x-ratelimit-delta", "--limit", "20", "--window", "2s"],
            upstream="",
            load=dict(callers=16, seconds=seconds, headers={"headroom-max-wait": "30s"}),
            measure=lambda st, t, run: {
                "throttled upstream": pct(st["throttled"] / max(st["accepted"] + st["throttled"], 1)),
                "most in one window (target 16)": max(st["accepted_per_window"] or [0]),
                "refused by Headroom": t.refused,
            })
    s.append(("learned only (20 per 2 s, x-ratelimit-delta, no config)", learned_only))

    def retry_after_only():
        seconds = 30 * SCALE
        return dict(
            mock=["--profile", "retry-after", "--limit", "10", "--window", "2s"],
            upstream="",
            load=dict(callers=16, seconds=seconds, headers={"headroom-max-wait": "30s"}),
            measure=lambda st, t, run: {
                "throttled upstream": f'{st["throttled"]} of {st["accepted"] + st["throttled"]}',
                "throttled after the first 2 windows": pct(after_first(st, run)),
                "utilisation of 0.8 x quota": pct(sum(whole_windows(st["accepted_per_window"], 2, int(seconds / 2))) / (8 * max(int(seconds / 2) - 2, 1))),
                "refused by Headroom": t.refused,
            })
    s.append(("Retry-After only (10 per 2 s, no config)", retry_after_only))
    return s


def after_first(st, run):
    # Throttled calls from the third window on (after the first throttles taught the limit),
    # over the calls that reached the upstream in those windows.
    throttled = sum(st["throttled_per_window"][2:])
    accepted = sum(st["accepted_per_window"][2:])
    return throttled / max(throttled + accepted, 1)


def changed(st, t, window, change_at, after, seconds):
    per = st["accepted_per_window"]
    first_after = int(change_at / window) + 2
    last = int(seconds / window)
    w = whole_windows(per, first_after, last)
    return {
        "throttled upstream": pct(st["throttled"] / max(st["accepted"] + st["throttled"], 1)),
        "new target reached, 2 windows after (0.8 x 10)": pct(sum(w) / len(w) / (0.8 * after)),
        "most in one window after (new quota 10)": max(per[int(change_at / window):last] or [0]),
        "refused by Headroom": t.refused,
    }


def metered(st, t, window, quota, seconds):
    # Whole windows under load, the first (nothing known yet) left out.
    w = whole_windows(st["accepted_per_window"], 1, int(seconds / window))
    return {
        "tokens spent per window, of 0.8 x quota": pct(sum(w) / len(w) / (0.8 * quota)),
        "most in one window (quota 3,000)": max(st["accepted_per_window"] or [0]),
        "throttled upstream": pct(st["throttled"] / max(st["accepted"] + st["throttled"], 1)),
        "refused by Headroom": t.refused,
        "answered 200": t.ok,
    }


def main():
    bin_path, label = binary()
    only = os.environ.get("ONLY", "")
    tmp = tempfile.mkdtemp(prefix="headroom-limits.")
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"# Limits through the proxy: headroom {label}, {cpu} CPUs, {time.strftime('%Y-%m-%d')}\n")
    try:
        for name, make in scenarios():
            if only and only not in name:
                continue
            spec = make()
            say(f"running: {name}")
            run = Run(bin_path, tmp, name, spec["mock"], spec["upstream"])
            try:
                tally = load(run.port, **spec["load"])
                run_stats = run.stats()
                result = spec["measure"](run_stats, tally, run)
            finally:
                run.stop()
            if os.environ.get("VERBOSE") == "1":
                say(f"accepted per window: {run_stats['accepted_per_window']}")
            cells = "; ".join(f"{k}: {v}" for k, v in result.items())
            print(f"| {name} | {cells} |", flush=True)
    finally:
        if os.environ.get("KEEP_TMP") == "1":
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
