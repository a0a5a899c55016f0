"""Load test for `textgen serve`: many concurrent clients on loopback, a mix of requests.

Starts the server itself (a child process on a free loopback port) on --bundle, or on a
2x256 char model with random weights (as bench/generate_speed.py builds), then runs
--clients concurrent clients for --seconds. Each client loops over a mix:

  short      POST /generate, 20 tokens
  medium     POST /generate, 50 tokens (its latency is the one reported)
  long       POST /generate, 400 tokens x 4 samples
  stream     POST /generate/stream, 200 tokens, read to the end
  abandoned  POST /generate, 2000 tokens x 8 samples, connection closed after 0.2 s

and reports requests served per second, tokens per second (against one client alone
doing the same mix), p50/p99 latency of the 50-token request, every status code seen
(a 503 counts as the application's only if its body is the JSON error), and the server's
RSS before and after. Bounded: loopback only, --clients <= 256, --seconds <= 600.

    python bench/serve_load.py                  # 64 clients, 60 s
    python bench/serve_load.py --seconds 15     # shorter
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HOST = "127.0.0.1"
MIX = [  # (name, path, body, weight)
    ("short", "/generate", {"prime": "The", "length": 20}, 4),
    ("medium", "/generate", {"prime": "The", "length": 50}, 4),
    ("long", "/generate", {"prime": "The", "length": 400, "num_samples": 4}, 1),
    ("stream", "/generate/stream", {"prime": "The", "length": 200}, 2),
    ("abandoned", "/generate", {"prime": "The", "length": 2000, "num_samples": 8}, 1),
]


class Tally:
    """Counts shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.status = collections.Counter()
        self.kinds = collections.Counter()
        self.tokens = 0
        self.served = 0
        self.medium_latency: list[float] = []
        self.bad_503 = 0

    def add(self, kind: str, status, tokens: int = 0, latency: float | None = None, json_503: bool = True):
        with self.lock:
            self.status[status] += 1
            self.kinds[kind] += 1
            self.tokens += tokens
            self.served += status == 200
            self.bad_503 += status == 503 and not json_503
            if latency is not None:
                self.medium_latency.append(latency)


def request(port: int, kind: str, path: str, body: dict, tally: Tally) -> None:
    """One request of the mix, its outcome added to the tally."""
    data = json.dumps({**body, "seed": random.randrange(2**31)}).encode()
    headers = {"Content-Type": "application/json", "Host": f"{HOST}:{port}"}
    if kind == "abandoned":
        sock = socket.create_connection((HOST, port), timeout=30)
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), HOST.encode(), port, len(data), data))
        time.sleep(0.2)
        sock.close()
        tally.add(kind, "abandoned")
        return
    start = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        conn.request("POST", path, data, headers)
        response = conn.getresponse()
        payload = response.read()
    except OSError as err:
        tally.add(kind, type(err).__name__)
        return
    finally:
        conn.close()
    latency = time.perf_counter() - start
    tokens = body["length"] * body.get("num_samples", 1) if response.status == 200 else 0
    json_503 = True
    if response.status == 503:
        try:
            json_503 = "error" in json.loads(payload) and response.getheader("Retry-After") is not None
        except ValueError:
            json_503 = False
    tally.add(kind, response.status, tokens, latency if kind == "medium" and response.status == 200 else None,
              json_503)


def client(port: int, until: float, tally: Tally, rng: random.Random) -> None:
    kinds = [m for m in MIX for _ in range(m[3])]
    while time.monotonic() < until:
        kind, path, body, _ = rng.choice(kinds)
        request(port, kind, path, body, tally)


def run(port: int, clients: int, seconds: float) -> tuple[Tally, float]:
    tally = Tally()
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(port, until, tally, random.Random(i)), daemon=True)
               for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 180)
    return tally, time.monotonic() - start


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def start_server(bundle: Path) -> tuple[subprocess.Popen, int]:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "textgen", "serve", str(bundle), "--host", HOST, "--port", "0"],
                            cwd=root, stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    line = proc.stdout.readline()
    if " at " not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(line.split(" at ")[1].split()[0].rstrip("/").rsplit(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a bundle to serve (default: a 2x256 char model with random weights)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--solo-seconds", type=float, default=None, help="one client alone (default: a quarter)")
    args = parser.parse_args()
    if not (1 <= args.clients <= 256 and 0 < args.seconds <= 600):
        parser.error("--clients must be in 1..256 and --seconds in (0, 600]")
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            from generate_speed import build_bundle

            bundle = build_bundle(Path(tmp))
        proc, port = start_server(bundle)
        try:
            rss_before = rss_mb(proc.pid)
            solo, solo_time = run(port, 1, args.solo_seconds or args.seconds / 4)
            many, many_time = run(port, args.clients, args.seconds)
            time.sleep(1.0)
            rss_after = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    report(args, solo, solo_time, many, many_time, rss_before, rss_after)


def report(args, solo, solo_time, many, many_time, rss_before, rss_after) -> None:
    from machine import describe, machine_record  # bench/machine.py

    print(f"{describe(machine_record())} (shared: other jobs may run)")
    print(f"| | 1 client ({solo_time:.0f} s) | {args.clients} clients ({many_time:.0f} s) |")
    print("|---|---|---|")
    print(f"| requests served per second | {solo.served / solo_time:.1f} | {many.served / many_time:.1f} |")
    print(f"| tokens per second | {solo.tokens / solo_time:,.0f} | {many.tokens / many_time:,.0f} |")
    for q in (0.5, 0.99):
        print(f"| 50-token request, p{int(q * 100)} latency | {percentile(solo.medium_latency, q) * 1000:.0f} ms "
              f"| {percentile(many.medium_latency, q) * 1000:.0f} ms |")
    codes = lambda t: ", ".join(f"{k}: {v}" for k, v in sorted(t.status.items(), key=str))  # noqa: E731
    print(f"| status codes | {codes(solo)} | {codes(many)} |")
    print(f"| 503s that were not the JSON error | {solo.bad_503} | {many.bad_503} |")
    print(f"| server RSS before / after | {rss_before:.0f} MB | {rss_after:.0f} MB |")


if __name__ == "__main__":
    main()
