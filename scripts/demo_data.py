#!/usr/bin/env python3
"""Data for homeostat's demo: backfilled history and a live exporter.

The demo needs a Prometheus that already knows a few days of normal behaviour
(so homeostat can fit its baselines at start) and live series that continue that
behaviour until the demo turns one of them anomalous. Both come from one value
model, `value()`, so the live data looks like the history it follows.

    demo_data.py history --out FILE [--days 3] [--step 60] [--end-offset 120] [--seed 7]
        OpenMetrics text for `promtool tsdb create-blocks-from openmetrics FILE DIR`.
    demo_data.py serve --port PORT [--anomaly-after SECONDS] [--anomaly-for SECONDS] [--seed 7]
        A Prometheus exporter on 127.0.0.1:PORT (GET /metrics). After
        --anomaly-after seconds (negative: never) the error ratio of shop/cart
        jumps to ~0.22; with --anomaly-for > 0 it returns to normal after that long.

Standard library only.
"""

import argparse
import datetime
import http.server
import math
import random
import signal
import sys
import threading
import time

DAY = 86400.0
MAX_DAYS = 14  # Prometheus only backfills into the last 15 days; keep a margin.

# (metric, help, [label sets]): every series the demo has.
FAMILIES = [
    ("demo_node_cpu_utilisation", "CPU utilisation of a node (ratio).",
     [{"node": f"node-{i}"} for i in range(1, 5)]),
    ("demo_http_p99_latency_seconds", "p99 HTTP request latency of a service.",
     [{"service": s} for s in ("cart", "checkout", "catalog")]),
    ("demo_http_error_ratio", "Share of HTTP requests answered with 5xx.",
     [{"namespace": "shop", "deployment": d} for d in ("cart", "checkout", "catalog")]),
    # Used by scripts/demo.sh as a second, quiet signal.
    ("demo_deployment_restarts", "Container restarts of a deployment in the last 10 minutes.",
     [{"namespace": "shop", "deployment": d} for d in ("cart", "checkout", "catalog")]),
]

ANOMALOUS = ("demo_http_error_ratio", {"namespace": "shop", "deployment": "cart"})


def _index(labels):
    """A small per-series number (0..6), so series of one family differ a little."""
    return sum(ord(c) for v in labels.values() for c in v) % 7


def daily(t, phase=0.0):
    """Daily seasonality by UTC hour in [-1, 1], peaking mid-afternoon UTC."""
    return math.sin(2 * math.pi * ((t % DAY) / DAY - 0.375) + phase)


def value(metric, labels, t, rng, anomalous=False):
    """The value of one series at unix time t: the one model for history and live."""
    k = _index(labels)
    if metric == "demo_node_cpu_utilisation":
        level = 0.30 + 0.02 * k
        v = level + 0.15 * daily(t, 0.1 * k) + rng.gauss(0, 0.02)
        return min(1.0, max(0.0, v))
    if metric == "demo_http_p99_latency_seconds":
        level = 0.08 + 0.02 * k  # 0.08 .. 0.20 s
        return max(0.001, level * (1 + 0.2 * daily(t)) + rng.gauss(0, 0.05 * level))
    if metric == "demo_http_error_ratio":
        if anomalous:
            return max(0.0, 0.22 + rng.gauss(0, 0.01))
        return max(0.0, 0.005 * (1 + 0.1 * daily(t)) + rng.gauss(0, 0.001))
    if metric == "demo_deployment_restarts":
        return 1.0 if rng.random() < 0.01 else 0.0  # mostly none, now and then one
    raise ValueError(f"unknown metric {metric}")


def series_name(metric, labels):
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- history ---------------------------------------------------------------

def history(args):
    if not 0 < args.days <= MAX_DAYS:
        sys.exit(f"history: --days must be in (0, {MAX_DAYS}] (Prometheus backfills only the last 15 days)")
    if args.step <= 0:
        sys.exit("history: --step must be positive")
    now = time.time()
    # On the step grid, so runs within one step write identical files.
    start = math.ceil((now - args.days * DAY) / args.step) * args.step
    end = now - args.end_offset
    if end < start:
        sys.exit("history: --end-offset leaves no room for any sample")
    times = range(start, math.floor(end) + 1, args.step)
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as out:
        for metric, help_text, label_sets in FAMILIES:
            out.write(f"# HELP {metric} {help_text}\n# TYPE {metric} gauge\n")
            for labels in label_sets:
                name = series_name(metric, labels)
                for t in times:
                    out.write(f"{name} {value(metric, labels, t, rng):.6g} {t}\n")
        out.write("# EOF\n")


# --- serve -----------------------------------------------------------------

class State:
    """Whether the anomaly is on, and the shared random source (both under one lock)."""

    def __init__(self, seed):
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.anomalous = False

    def set_anomalous(self, on):
        with self.lock:
            self.anomalous = on
        series = series_name(*ANOMALOUS)
        if on:
            print(f"demo exporter: injected anomaly into {series} at {utc_now()}", flush=True)
        else:
            print(f"demo exporter: {series} back to normal at {utc_now()}", flush=True)

    def exposition(self):
        """Prometheus text format 0.0.4 with the current value of every series."""
        now = time.time()
        lines = []
        with self.lock:
            for metric, help_text, label_sets in FAMILIES:
                lines.append(f"# HELP {metric} {help_text}")
                lines.append(f"# TYPE {metric} gauge")
                for labels in label_sets:
                    bad = self.anomalous and (metric, labels) == ANOMALOUS
                    v = value(metric, labels, now, self.rng, bad)
                    lines.append(f"{series_name(metric, labels)} {v:.6g}")
        return ("\n".join(lines) + "\n").encode()


def schedule(state, after, duration, stopped):
    """Turn the anomaly on after `after` seconds and off `duration` seconds later (if > 0)."""
    if after < 0 or stopped.wait(after):
        return
    state.set_anomalous(True)
    if duration > 0 and not stopped.wait(duration):
        state.set_anomalous(False)


def make_handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = state.exposition()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # no per-request logging

    return Handler


def serve(args):
    state = State(args.seed)
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(state))
    except OSError as e:
        sys.exit(f"demo exporter: cannot listen on 127.0.0.1:{args.port}: {e}")
    stopped = threading.Event()

    def stop(*_):
        stopped.set()
        # shutdown() blocks until serve_forever returns, so call it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"demo exporter: listening on 127.0.0.1:{args.port}", flush=True)
    threading.Thread(target=schedule, args=(state, args.anomaly_after, args.anomaly_for, stopped),
                     daemon=True).start()
    server.serve_forever()
    server.server_close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("history", help="write OpenMetrics history for promtool")
    h.add_argument("--out", required=True)
    h.add_argument("--days", type=float, default=3)
    h.add_argument("--step", type=int, default=60)
    h.add_argument("--end-offset", type=float, default=120)
    h.add_argument("--seed", type=int, default=7)
    s = sub.add_parser("serve", help="serve live metrics on 127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--anomaly-after", type=float, default=20, help="seconds until the anomaly (negative: never)")
    s.add_argument("--anomaly-for", type=float, default=0, help="seconds until it recovers (0: never)")
    s.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    if args.cmd == "history":
        history(args)
    else:
        serve(args)


if __name__ == "__main__":
    main()
