"""Load test of the real server (app.py under waitress, on loopback): many clients at once polling job
status, holding progress streams (SSE), submitting, cancelling and downloading images, while one client keeps
a 512 px job rendering; then RSS after 500 small jobs against after 50.

python benchmarks/serving_load.py                   # 50 clients, 60 s, the tiny model (offline), ~3 min
python benchmarks/serving_load.py --smoke           # 4 clients, 3 s, 30 jobs: seconds (the test suite)

What it reports, every figure measured in this run: the answers by status (no 5xx is the bar), the 503s of
the full queue and of `limits.streams`, /healthz latency (p50/p99 overall and while the 512 px job renders;
the bar is p99 < 250 ms), the largest queue length and stream count /healthz reported (bounded by
`queue_size` and `limits.streams`), and the server process's RSS after 50 and after 500 small jobs (the bar:
within 50 MiB). The server runs as its own process (`python app.py model=tiny ...`) so its RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, table, write_results

MIB = 2**20
HEALTHZ_P99_BAR_MS, RSS_BAR_MIB = 250, 50


def request(url: str, owner: str, payload: dict | None = None, method: str | None = None, timeout: float = 60):
    """(status, body) of one request as `owner`; a refused connection is status 0."""
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Owner-Token": owner}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


class Tally:
    """Answers by (action, status) and the 503s by reason, shared by every client thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: Counter[tuple[str, int]] = Counter()
        self.busy: Counter[str] = Counter()

    def add(self, action: str, status: int, body: bytes) -> None:
        with self.lock:
            self.answers[(action, status)] += 1
            if status == 503:
                self.busy["streams" if b"limits.streams" in body else "queue"] += 1


def client(base: str, index: int, until: float, tally: Tally, size: int) -> None:
    """One client: a random mix of actions on its own jobs, with 50-300 ms between them."""
    rng, owner, mine = random.Random(index), f"load-client-{index:04d}-owner", []
    while time.monotonic() < until:
        action = rng.choices(["poll", "stream", "submit", "cancel", "download"], [5, 1, 2, 1, 1])[0]
        if action == "submit" or not mine:
            action = "submit"
            status, body = request(f"{base}/jobs", owner, {"prompt": f"a shape {index}", "steps": 3, "width": size})
            if status == 202:
                mine.append(json.loads(body)["id"])
        elif action == "poll":
            status, body = request(f"{base}/jobs/{rng.choice(mine)}", owner)
        elif action == "cancel":
            status, body = request(f"{base}/jobs/{mine[-1]}", owner, method="DELETE")
        elif action == "download":
            status, body = request(f"{base}/jobs/{rng.choice(mine)}/image.png", owner)
        else:  # read the stream to its end (the job's last state) or for 5 s
            status, body = stream(f"{base}/jobs/{mine[-1]}/events", owner, min(5.0, until - time.monotonic() + 0.1))
        tally.add(action, status, body)
        time.sleep(rng.uniform(0.05, 0.3))


def stream(url: str, owner: str, seconds: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"X-Owner-Token": owner})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            end = time.monotonic() + seconds
            while time.monotonic() < end and (line := response.readline()):
                if line.startswith(b"data: ") and json.loads(line[6:])["state"] in ("done", "failed", "cancelled"):
                    break
            return response.status, b""
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def big_renderer(base: str, until: float, big: dict, tally: Tally, size: int) -> None:
    """Keeps one `size` px job rendering; `big["running"]` says whether it is now."""
    owner = "load-big-render-owner"
    while time.monotonic() < until:
        status, body = request(f"{base}/jobs", owner, {"prompt": "a big render", "steps": 20, "width": size,
                                                        "height": size})  # fmt: skip
        tally.add("submit 512", status, body)
        if status != 202:
            time.sleep(0.5)
            continue
        job_id = json.loads(body)["id"]
        while time.monotonic() < until:
            status, body = request(f"{base}/jobs/{job_id}", owner)
            state = json.loads(body)["state"] if status == 200 else "gone"
            big["running"] = state == "running"
            if state not in ("queued", "running"):
                break
            time.sleep(0.1)
    big["running"] = False


def prober(base: str, until: float, big: dict, samples: list, limits: dict) -> None:
    """/healthz every 50 ms: its latency, whether the big job was rendering, the queue and stream counts."""
    while time.monotonic() < until:
        started = time.perf_counter()
        status, body = request(f"{base}/healthz", "prober-owner-token")
        took = time.perf_counter() - started
        health = json.loads(body) if status in (200, 503) and body else {}
        samples.append((took, big["running"], status))
        limits["queue"] = max(limits["queue"], health.get("queue_length", 0))
        limits["streams"] = max(limits["streams"], health.get("streams_open", 0))
        time.sleep(0.05)


def start_server(port: int, out_dir: str, threads: int) -> subprocess.Popen:
    # engine.backend=torch: the OpenVINO engine (auto on a bf16 CPU) swaps the VAE for one the preview fit cannot use
    command = [sys.executable, "app.py", "model=tiny", "engine.backend=torch", f"port={port}", f"threads={threads}",
               f"out_dir={out_dir}/images",
               f"hydra.run.dir={out_dir}/run"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if request(f"http://127.0.0.1:{port}/healthz", "x" * 16)[0] == 200:
            return process
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}")
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("app.py did not become ready in 180 s")


def rss_after_jobs(base: str, counts: tuple[int, int], rss) -> dict[int, float]:
    """Run small jobs (64 px, 1 step) until each count is reached; the server's RSS (MiB) at each."""
    owner, done, out = "rss-jobs-owner-token", 0, {}
    while done < max(counts):
        status, body = request(f"{base}/jobs", owner, {"prompt": "a dot", "steps": 1})
        if status != 202:
            time.sleep(0.05)
            continue
        job_id = json.loads(body)["id"]
        while json.loads(request(f"{base}/jobs/{job_id}", owner)[1])["state"] in ("queued", "running"):
            time.sleep(0.01)
        request(f"{base}/jobs/{job_id}/image.png", owner)
        done += 1
        if done in counts:
            out[done] = rss() / MIB
    return out


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def lscpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return "unknown (lscpu failed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs", type=int, nargs=2, default=(50, 500), help="RSS after this many small jobs")
    parser.add_argument("--big-size", type=int, default=512, help="the job that renders during the load (px)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--smoke", action="store_true", help="4 clients, 3 s, jobs 10 and 30: a check of the script")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.seconds, args.jobs, args.big_size = 4, 3.0, (10, 30), 128
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ldm-load-") as work:
        process = start_server(port, work, args.threads)
        server = psutil.Process(process.pid)
        try:
            config = json.loads(request(f"{base}/healthz", "x" * 16)[1])
            tally, big, samples, seen = Tally(), {"running": False}, [], {"queue": 0, "streams": 0}
            until = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client, args=(base, i, until, tally, 64)) for i in range(args.clients)]
            threads += [threading.Thread(target=big_renderer, args=(base, until, big, tally, args.big_size)),
                        threading.Thread(target=prober, args=(base, until, big, samples, seen))]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rss = rss_after_jobs(base, tuple(args.jobs), lambda: server.memory_info().rss)
        finally:
            process.terminate()
            process.wait(timeout=30)
    statuses = Counter()
    for (_, status), count in tally.answers.items():
        statuses[status] += count
    statuses.update(status for _, _, status in samples)
    errors = sum(count for status, count in statuses.items() if status >= 500 and status != 503)
    failed = statuses.get(0, 0)
    all_ms = [s[0] * 1e3 for s in samples]
    during_ms = [s[0] * 1e3 for s in samples if s[1]]
    small, large = args.jobs
    growth = rss[large] - rss[small]
    rows = [
        ["requests answered", sum(statuses.values()) - failed, "", ""],
        ["answers by status", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()) if k), "", ""],
        ["5xx answers other than 503", errors, "0", "yes" if errors == 0 else "NO"],
        ["connections refused or timed out", failed, "0", "yes" if failed == 0 else "NO"],
        ["503: queue full", tally.busy["queue"], "", ""],
        ["503: limits.streams", tally.busy["streams"], "", ""],
        ["/healthz p50, ms (all samples)", percentile(all_ms, 50), "", ""],
        ["/healthz p99, ms (all samples)", percentile(all_ms, 99), "", ""],
    ]
    if during_ms:
        p99 = percentile(during_ms, 99)
        rows.append([f"/healthz p99, ms, while the {args.big_size} px job renders ({len(during_ms)} samples)", p99,
                     f"< {HEALTHZ_P99_BAR_MS}", "yes" if p99 < HEALTHZ_P99_BAR_MS else "NO"])  # fmt: skip
    else:
        rows.append([f"/healthz while the {args.big_size} px job renders", "no sample (not measured)", "", ""])
    rows += [
        ["largest queue_length /healthz reported", seen["queue"], f"≤ {config['queue_size']}",
         "yes" if seen["queue"] <= config["queue_size"] else "NO"],
        ["largest streams_open /healthz reported", seen["streams"], f"≤ {config['streams_max']}",
         "yes" if seen["streams"] <= config["streams_max"] else "NO"],
        [f"server RSS after {small} small jobs, MiB", rss[small], "", ""],
        [f"server RSS after {large} small jobs, MiB", rss[large], "", ""],
        [f"RSS growth from {small} to {large} jobs, MiB", growth, f"≤ {RSS_BAR_MIB}",
         "yes" if growth <= RSS_BAR_MIB else "NO"],
    ]  # fmt: skip
    report = (
        f"Load test of `python app.py model=tiny` (waitress, {config['queue_size']} queue places, "
        f"{config['streams_max']} streams) on loopback: {args.clients} clients for {args.seconds:g} s "
        f"(status polls, SSE streams, 64 px submits, cancels, downloads; 50-300 ms between actions), one client "
        f"keeping a {args.big_size} px job rendering, /healthz probed every 50 ms; then small jobs one after "
        f"another for the RSS figures. CPU (lscpu): {lscpu_model()}.\n\n"
        + table(["figure", "measured", "bar", "met"], rows)
        + "\n"
    )
    print(report)
    data = {"clients": args.clients, "seconds": args.seconds, "statuses": dict(statuses), "busy": dict(tally.busy),
            "healthz_ms": {"p50": percentile(all_ms, 50), "p99": percentile(all_ms, 99),
                           "p99_during_big": percentile(during_ms, 99) if during_ms else None,
                           "samples": len(all_ms), "samples_during_big": len(during_ms)},
            "largest_queue_length": seen["queue"], "queue_size": config["queue_size"],
            "largest_streams_open": seen["streams"], "streams_max": config["streams_max"],
            "rss_mib": {str(k): v for k, v in rss.items()}, "rss_growth_mib": growth, "cpu": lscpu_model(),
            "smoke": args.smoke}  # fmt: skip
    out_dir = args.out_dir or (Path(tempfile.gettempdir()) / "ldm-bench-smoke" if args.smoke else None)
    for path in write_results("serving_load", report, data, out_dir=out_dir):
        print(path)


if __name__ == "__main__":
    main()
