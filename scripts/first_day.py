#!/usr/bin/env python3
"""How many false anomalies daily series open in their first live day, by history.

    scripts/first_day.py make OUT DAYS [STEP]   # DAYS of history every STEP s (300)
    homeostat backtest --data OUT --config CONFIG --out RESULTS
    scripts/first_day.py score OUT RESULTS

`make` writes the demo's daily series (`scripts/demo_data.py`: four node CPU and three
p99 latency series, a daily wave with noise, no anomaly) eight times, the live part
starting every three hours of the day: DAYS of history at STEP seconds, as the agent
fits it from a range query, then one day at 15 s, as it queries live. `score` counts
the anomalies opened in the live day: each is a false one. With the demo's
`direction = "up"`: two days of history at one minute gave 73 in 56 series, at five
minutes 58; three days or more (at five minutes, and seven at one minute), none.
"""
import csv
import datetime
import glob
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_data  # noqa: E402

DAY = 86400
LIVE_STEP = 15
# The demo's daily families: node CPU and p99 latency.
FAMILIES = [(metric, series) for metric, _, series in demo_data.FAMILIES[:2]]


def stamp(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def make(out, days, step):
    base = 1_795_600_000 - 1_795_600_000 % DAY
    for start in range(8):
        rng = random.Random(start)
        live_from = base + start * 3 * 3600
        folder = os.path.join(out, f"start{start * 3:02d}h")
        os.makedirs(folder, exist_ok=True)
        for metric, series in FAMILIES:
            for labels in series:
                rows, t = [], live_from - days * DAY
                while t < live_from:
                    rows.append((t, demo_data.value(metric, labels, t, rng)))
                    t += step
                fitted = len(rows)
                while t < live_from + DAY:
                    rows.append((t, demo_data.value(metric, labels, t, rng)))
                    t += LIVE_STEP
                name = metric + "_" + "_".join(labels.values())
                with open(os.path.join(folder, name + ".csv"), "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["timestamp", "value"])
                    w.writerows((stamp(t), v) for t, v in rows)
                with open(os.path.join(folder, name + ".fitted"), "w") as f:
                    f.write(str(fitted))


def score(out, results):
    series = opened = 0
    for path in sorted(glob.glob(os.path.join(results, "*", "*.csv"))):
        rel = os.path.relpath(path, results)
        with open(os.path.join(out, rel[: -len(".csv")] + ".fitted")) as f:
            fitted = int(f.read())
        with open(path) as f:
            rows = list(csv.DictReader(f))
        series += 1
        # `homeostat backtest` marks the row where an anomaly opens with 1.0, others < 0.5.
        opened += sum(float(r["anomaly_score"]) >= 0.5 for r in rows[fitted:])
    print(f"{series} series, {opened} anomalies opened in the first live day ({opened / max(series, 1):.2f} per series)")


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "make":
        make(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 300)
    elif len(sys.argv) == 4 and sys.argv[1] == "score":
        score(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
