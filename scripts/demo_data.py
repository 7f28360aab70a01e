#!/usr/bin/env python3
"""Data for homeostat's demo: backfilled history and a live exporter.

The demo needs a Prometheus that already knows a few days of normal behaviour
(so homeostat can fit its baselines at start) and live series that continue that
behaviour until the demo turns one of them anomalous. Both come from one value
model, `value()`, so the live data looks like the history it follows.

    demo_data.py history --out FILE [--days 3] [--step 60] [--end-offset 120] [--seed 7]
        OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`.
    demo_data.py serve --port PORT [--anomaly-after SECONDS] [--anomaly-for SECONDS] [--seed 7]
        A Prometheus exporter on 127.0.0.1:PORT (GET /metrics).

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

# (metric, help, [label sets]) — every series the demo has.
FAMILIES = [
    ("demo_node_cpu_utilisation", "CPU utilisation of a node (ratio).",
     [{"node": f"node-{i}"} for i in range(1, 5)]),
    ("demo_http_p99_latency_seconds", "p99 HTTP request latency of a service.",
     [{"service": s} for s in ("cart", "checkout", "catalog")]),
    ("demo_http_error_ratio", "Share of HTTP requests answered with 5xx.",
     [{"namespace": "shop", "deployment": d} for d in ("cart", "checkout", "catalog")]),
    ("demo_deployment_restarts", "Container restarts of a deployment in the last 10 minutes.",
     [{"namespace": "shop", "deployment": d} for d in ("cart", "checkout", "catalog")]),
]

ANOMALOUS = ("demo_http_error_ratio", {"namespace": "shop", "deployment": "cart"})


def _index(labels):
    """A small per-series number, so series of one family differ a little."""
    return sum(ord(c) for v in labels.values() for c in v) % 7


def daily(t, phase=0.0):
    """Daily seasonality in [-1, 1], peaking mid-afternoon UTC."""
    return math.sin(2 * math.pi * ((t % DAY) / DAY - 0.375) + phase)


def value(metric, labels, t, rng, anomalous=False):
    """The value of one series at unix time t (the one model for history and live)."""
    k = _index(labels)
    if metric == "demo_node_cpu_utilisation":
        level = 0.30 + 0.02 * k
        v = level + 0.15 * daily(t, 0.1 * k) + rng.gauss(0, 0.02)
        return min(1.0, max(0.0, v))
    if metric == "demo_http_p99_latency_seconds":
        level = 0.08 + 0.02 * k
        return max(0.001, level * (1 + 0.2 * daily(t)) + rng.gauss(0, 0.05 * level))
    if metric == "demo_http_error_ratio":
        if anomalous:
            return max(0.0, 0.22 + rng.gauss(0, 0.01))
        return max(0.0, 0.005 * (1 + 0.1 * daily(t)) + rng.gauss(0, 0.001))
    if metric == "demo_deployment_restarts":
        # Mostly none, now and then one.
        return 1.0 if rng.random() < 0.01 else 0.0
    raise ValueError(f"unknown metric {metric}")


def fmt_labels(labels):
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def history(args):
    rng = random.Random(args.seed)
    now = time.time()
    end = now - args.end_offset
    start = now - args.days * DAY
    if args.days > 14:
        sys.exit("history: --days must be at most 14 (Prometheus backfill wants the last 15 days)")
    steps = int((end - start) // args.step)
    with open(args.out, "w", encoding="utf-8") as out:
        for metric, help_text, label_sets in FAMILIES:
            out.write(f"# HELP {metric} {help_text}\n# TYPE {metric} gauge\n")
            for labels in label_sets:
                name = metric + fmt_labels(labels)
                for i in range(steps + 1):
                    t = int(start + i * args.step)
                    out.write(f"{name} {value(metric, labels, t, rng):.6g} {t}\n")
        out.write("# EOF\n")


class Exporter(http.server.BaseHTTPRequestHandler):
    """Serves the current value of every series; the anomaly starts on schedule."""

    started = time.time()
    anomaly_after = 20.0
    anomaly_for = 0.0
    rng = random.Random(7)
    announced = False
    recovered = False
    lock = threading.Lock()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path != "/metrics":
            self.send_error(404)
            return
        now = time.time()
        cls = type(self)
        elapsed = now - cls.started
        anomalous = cls.anomaly_after >= 0 and elapsed >= cls.anomaly_after
        if anomalous and cls.anomaly_for > 0 and elapsed >= cls.anomaly_after + cls.anomaly_for:
            anomalous = False
            if not cls.recovered:
                cls.recovered = True
                at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                print(f"demo exporter: {ANOMALOUS[0]}{fmt_labels(ANOMALOUS[1])} back to normal at {at}", flush=True)
        lines = []
        with cls.lock:
            if anomalous and not cls.announced:
                cls.announced = True
                at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                print(f"demo exporter: injected anomaly into {ANOMALOUS[0]}{fmt_labels(ANOMALOUS[1])} at {at}", flush=True)
            for metric, help_text, label_sets in FAMILIES:
                lines.append(f"# HELP {metric} {help_text}")
                lines.append(f"# TYPE {metric} gauge")
                for labels in label_sets:
                    bad = anomalous and (metric, labels) == ANOMALOUS
                    lines.append(f"{metric}{fmt_labels(labels)} {value(metric, labels, now, cls.rng, bad):.6g}")
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(args):
    Exporter.started = time.time()
    Exporter.anomaly_after = args.anomaly_after
    Exporter.anomaly_for = args.anomaly_for
    Exporter.rng = random.Random(args.seed)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Exporter)

    def stop(*_):
        # shutdown() blocks until serve_forever returns, so call it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"demo exporter: listening on 127.0.0.1:{args.port}", flush=True)
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
    s.add_argument("--anomaly-after", type=float, default=20)
    s.add_argument("--anomaly-for", type=float, default=0, help="seconds until it recovers (0: never)")
    s.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    history(args) if args.cmd == "history" else serve(args)


if __name__ == "__main__":
    main()
