#!/usr/bin/env python3
"""NAB resampled finer, scored on the original rows: does the engine judge a series
queried every 15 s as it judges the same series every five minutes?

    scripts/resampled_nab.py make NAB_DATA K MODE OUT   # K-times finer, MODE lin|hold
    homeostat backtest --data OUT --out RESULTS
    scripts/resampled_nab.py score NAB_DIR RESULTS [--five-minute]

`make` inserts K-1 points between consecutive rows: `lin` interpolates linearly (what a
`rate(...[5m])` evaluated more often looks like), `hold` repeats the row (what an instant
query returns between scrapes). The original rows stay, at their timestamps.

`score` maps every detection (anomaly_score >= 0.5) to the original row at or before
it, then scores as NAB does (probation, windows and weights in original rows; see
nab-dev's README), so the figures compare with the five-minute run's.
`--five-minute` keeps only files sampled every five minutes or faster (coarser files
stay one point per step however they are resampled, so they test nothing here).
"""
import bisect
import csv
import datetime as dt
import glob
import json
import math
import os
import sys


def parse(s):
    return dt.datetime.fromisoformat(s.split(".")[0])


def make(data, k, mode, out):
    for path in sorted(glob.glob(os.path.join(data, "*", "*.csv"))):
        rows = list(csv.DictReader(open(path)))
        ts = [parse(r["timestamp"]) for r in rows]
        vs = [float(r["value"]) for r in rows]
        rel = os.path.relpath(path, data)
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        with open(os.path.join(out, rel), "w") as f:
            f.write("timestamp,value\n")
            for i, (t, v) in enumerate(zip(ts, vs)):
                f.write("%s,%r\n" % (t.strftime("%Y-%m-%d %H:%M:%S"), v))
                if i + 1 == len(vs):
                    break
                step = (ts[i + 1] - t) / k
                for j in range(1, k):
                    x = v if mode == "hold" else v + (vs[i + 1] - v) * j / k
                    f.write("%s,%r\n" % ((t + step * j).strftime("%Y-%m-%d %H:%M:%S"), x))


def sig(y):
    return -1.0 if y > 3 else 2 / (1 + math.exp(5 * y)) - 1


PROFILES = {
    "standard": (1, 1, 0.11),
    "reward_low_FP_rate": (1, 1, 0.22),
    "reward_low_FN_rate": (1, 2, 0.11),
}


def score(nab, results, five_minute):
    labels = json.load(open(os.path.join(nab, "labels", "combined_windows.json")))
    raw = {k: 0.0 for k in PROFILES}
    windows = hits = false_alarms = 0
    for name in sorted(labels):
        orig = [parse(r["timestamp"]).timestamp()
                for r in csv.DictReader(open(os.path.join(nab, "data", name)))]
        if five_minute and (orig[-1] - orig[0]) / (len(orig) - 1) > 400:
            continue
        probation = min(int(0.15 * len(orig)), 750)
        row = {t: i for i, t in enumerate(orig)}
        wins = [(row[parse(a).timestamp()], row[parse(b).timestamp()]) for a, b in labels[name]]
        det = []
        for r in csv.DictReader(open(os.path.join(results, name))):
            if float(r["anomaly_score"]) >= 0.5:
                i = bisect.bisect_right(orig, parse(r["timestamp"]).timestamp()) - 1
                if i >= probation:
                    det.append(i)
        windows += len(wins)
        hits += sum(1 for a, b in wins if any(a <= i <= b for i in det))
        outside = [i for i in det if not any(a <= i <= b for a, b in wins)]
        false_alarms += len(outside)
        for p, (tp, fn, fp) in PROFILES.items():
            for a, b in wins:
                inside = [i for i in det if a <= i <= b]
                raw[p] += tp * sig(-(b - min(inside) + 1) / (b - a + 1)) / sig(-1) if inside else -fn
            for i in outside:
                before = [(a, b) for a, b in wins if b < i]
                if before:
                    a, b = before[-1]
                    raw[p] += fp * sig(abs(i - b) / (b - a))
                else:
                    raw[p] -= fp
    out = {p: round(100 * (raw[p] + fn * windows) / ((tp + fn) * windows), 2)
           for p, (tp, fn, _) in PROFILES.items()}
    out.update(windows=windows, detected=hits, false_alarms=false_alarms)
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "score":
        score(sys.argv[2], sys.argv[3], sys.argv[4:] == ["--five-minute"])
    else:
        sys.exit(__doc__)
