#!/usr/bin/env python3
"""NAB's own scoring, restated from numenta/NAB (`nab/sweeper.py`, `Runner.normalize`),
to check `homeostat backtest`'s scorer against it:

    homeostat backtest --data DATA --labels LABELS --out RESULTS
    scripts/nab_score.py RESULTS LABELS

It reads the results (`timestamp,value,anomaly_score,label`) at NAB's threshold for
them (a row is a detection when its score is >= 0.5) and prints the normalised score
of each profile. What it keeps of NAB, and homeostat's scorer must agree with:

- a window enters at its first timestamp and ends at its last; rows in the first
  min(floor(0.15 n), 750) of a file are "probationary" and are not scored at all;
- a window is scored (and costs fn_weight when missed) only if one of its rows is past
  probation: a window wholly inside probation is in neither the raw score nor the
  null detector's baseline;
- the perfect score counts every window of the labels file, those too;
- a false positive before any window is at position 3.0 (sig = -1); after one, at
  |i - R_prev| / (W_prev - 1); the scaled sigmoid is -1 from 3.0 on (inclusive).
"""
import csv
import json
import math
import os
import sys

PROFILES = [("standard", 1.0, 1.0, 0.11), ("reward_low_FP_rate", 1.0, 1.0, 0.22),
            ("reward_low_FN_rate", 1.0, 2.0, 0.11)]


def scaled_sigmoid(y):
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def score_file(times, hits, windows, tp, fn, fp):
    """(raw score, scorable windows) of one file, as NAB's sweeper at one threshold."""
    probation = min(math.floor(0.15 * len(times)), 0.15 * 5000)
    limits = list(windows)
    parts, fps = {}, 0.0
    cur = name = width = right = None
    prev_width = prev_right = None
    max_tp = scaled_sigmoid(-1.0)
    for i, t in enumerate(times):
        if limits and t == limits[0][0]:
            cur = limits.pop(0)
            name = cur[0]
            right = times.index(cur[1])
            width = float(right - times.index(cur[0]) + 1)
        if cur is not None:
            weighted = scaled_sigmoid(-(right - i + 1) / width) * tp / max_tp
        else:
            pos = 3.0 if prev_right is None else abs(prev_right - i) / float(prev_width - 1)
            weighted = scaled_sigmoid(pos) * fp
        if i >= probation:
            if name is not None:
                parts.setdefault(name, -fn)
                if hits[i]:
                    parts[name] = max(parts[name], weighted)
            elif hits[i]:
                fps += weighted
        if cur is not None and t == cur[1]:
            prev_right, prev_width = i, width
            cur = name = width = right = None
    return sum(parts.values()) + fps, len(parts)


def main(results, labels_path):
    with open(labels_path) as f:
        labels = json.load(f)
    all_windows = sum(len(w) for w in labels.values())
    for pname, tp, fn, fp in PROFILES:
        raw, scorable = 0.0, 0
        for rel, windows in labels.items():
            path = os.path.join(results, rel)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                rows = list(csv.DictReader(f))
            times = [r["timestamp"] for r in rows]
            hits = [float(r["anomaly_score"]) >= 0.5 for r in rows]
            # Labels write fractional seconds; results keep the data's timestamps.
            norm = [(a.split(".")[0], b.split(".")[0]) for a, b in windows]
            s, n = score_file(times, hits, norm, tp, fn, fp)
            raw, scorable = raw + s, scorable + n
        null, perfect = -fn * scorable, tp * all_windows
        print(f"{pname:<20} {100 * (raw - null) / (perfect - null):8.2f}  "
              f"(raw {raw:.3f}, scorable windows {scorable} of {all_windows})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
