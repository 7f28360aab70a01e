#!/usr/bin/env python3
"""Known anomalies in known series: what the engine catches beyond NAB's labels.

    scripts/synthetic.py make OUT        # 112 labelled series under OUT/<base>/<kind>_<n>.csv
    homeostat backtest --data OUT --out RESULTS
    scripts/synthetic.py score RESULTS

    scripts/synthetic.py clean OUT       # 40 anomaly-free series under OUT/clean/<kind>_<n>.csv
    homeostat backtest --data OUT --out RESULTS
    scripts/synthetic.py check RESULTS [THRESHOLD]

`clean` and `check` test the threshold's calibration: a threshold t states a false-alarm
rate of (1 - t) per five-minute step, 288 (1 - t) per series per day (0.288 at the
default 0.999). Ten kinds of anomaly-free series (Gaussian, Student-t(3), lognormal,
Pareto(3), Poisson counts at 3 and 50, AR(1), a daily wave with noise, daily Poisson
counts, a daily wave with noise twice as wide by day), four of each, 20,000 five-minute
points (69 days); the first 2,016 (a week, the agent's default history) are history and
not counted. `check` prints the anomalies opened per series-day by kind, marks a kind
above the stated rate, and exits 1 if all of them together are above it.

Four kinds of series (`iid` Gaussian noise; `daily`, a daily wave with noise; `ar1`, a
wandering AR(1) level; `counts`, Poisson counts with a daily cycle), 4,000 points at five
minutes each, and seven kinds of anomaly starting at row 3,000 (ten days in), sized in
the series' own noise (sigma; for counts, the square root of the rate then):

    spike  one point +8 sigma          dip      one point -8 sigma
    shift  +4 sigma from then on       var      the noise 4x wider from then on
    drift  a ramp to +6 sigma over 100 points, then held
    stuck  the value frozen for 100 points (an exporter serving a stale gauge)
    zero   0 for 30 points (a broken pipeline)

Each combination comes four times with different noise (a fixed seed: the data are the
same on every machine). `score` counts an anomaly as caught when one opens within 100
points of its start, and the false alarms as the anomalies opened in rows 1,000 to
2,999 (after warm-up, before any injection), per 1,000 points.
"""
import csv
import datetime as dt
import glob
import math
import os
import random
import sys

BASES = ["iid", "daily", "ar1", "counts"]
KINDS = ["spike", "dip", "shift", "var", "drift", "stuck", "zero"]
POINTS, AT, REPS = 4000, 3000, 4
CAUGHT_WITHIN, CLEAN_FROM = 100, 1000


def poisson(rng, lam):
    # Knuth's method; the rates here are small.
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def series(base, kind, rng):
    """The values of one series and its anomaly."""
    xs, ar = [], 0.0
    for i in range(POINTS):
        day = math.sin(2 * math.pi * i / 288)
        if base == "counts":
            mean = 20 + 15 * day
            x, sigma = float(poisson(rng, mean)), math.sqrt(mean)
        else:
            if base == "ar1":
                ar = 0.9 * ar + rng.gauss(0, 1)
            mean = {"iid": 50.0, "daily": 50 + 20 * day, "ar1": 50 + 2 * ar}[base]
            noise = 0.5 if base == "ar1" else 2.0
            x = mean + rng.gauss(0, noise)
            # AR(1)'s own spread: 2 / sqrt(1 - 0.9^2), about 4.6.
            sigma = 2 / math.sqrt(1 - 0.81) if base == "ar1" else noise
        j = i - AT
        if j >= 0:
            if kind == "spike" and j == 0:
                x += 8 * sigma
            elif kind == "dip" and j == 0:
                x -= 8 * sigma
            elif kind == "shift":
                x += 4 * sigma
            elif kind == "var":
                x = mean + (x - mean) * 4
            elif kind == "drift":
                x += min(j / 100, 1.0) * 6 * sigma
            elif kind == "stuck" and j < 100:
                x = xs[AT - 1]
            elif kind == "zero" and j < 30:
                x = 0.0
        xs.append(x)
    return xs


CLEAN_KINDS = ["gauss", "t3", "lognormal", "pareto", "poisson3", "poisson50", "ar1",
               "daily", "dailycounts", "dailynoise"]
CLEAN_POINTS, CLEAN_HISTORY, CLEAN_REPS = 20000, 2016, 4


def clean_series(kind, rng):
    """The values of one anomaly-free series."""
    xs, ar = [], 0.0
    for i in range(CLEAN_POINTS):
        day = math.sin(2 * math.pi * i / 288)
        if kind == "gauss":
            x = 50 + rng.gauss(0, 2)
        elif kind == "t3":
            # Student-t with 3 degrees of freedom: a normal over sqrt(chi2(3) / 3).
            chi2 = sum(rng.gauss(0, 1) ** 2 for _ in range(3))
            x = 50 + 2 * rng.gauss(0, 1) / math.sqrt(chi2 / 3)
        elif kind == "lognormal":
            x = math.exp(rng.gauss(1, 0.5))
        elif kind == "pareto":
            x = rng.paretovariate(3)
        elif kind == "poisson3":
            x = float(poisson(rng, 3))
        elif kind == "poisson50":
            x = float(poisson(rng, 50))
        elif kind == "ar1":
            ar = 0.9 * ar + rng.gauss(0, 1)
            x = 50 + ar
        elif kind == "daily":
            x = 50 + 20 * day + rng.gauss(0, 2)
        elif kind == "dailycounts":
            x = float(poisson(rng, 20 + 15 * day))
        else:
            x = 50 + 20 * day + rng.gauss(0, 2 + 2 * max(day, 0))
        xs.append(x)
    return xs


def clean(out):
    start = dt.datetime(2026, 1, 1)
    os.makedirs(os.path.join(out, "clean"), exist_ok=True)
    for k, kind in enumerate(CLEAN_KINDS):
        for n in range(CLEAN_REPS):
            rng = random.Random(7000 + 10 * k + n)
            with open(os.path.join(out, "clean", f"{kind}_{n}.csv"), "w") as f:
                f.write("timestamp,value\n")
                for i, x in enumerate(clean_series(kind, rng)):
                    t = start + dt.timedelta(minutes=5 * i)
                    f.write(f"{t:%Y-%m-%d %H:%M:%S},{x!r}\n")


def check(results, threshold=0.999):
    stated = 288 * (1 - threshold)
    opened, days = {}, {}
    for path in glob.glob(os.path.join(results, "clean", "*.csv")):
        kind = os.path.basename(path).rsplit("_", 1)[0]
        rows = list(csv.DictReader(open(path)))
        opened[kind] = opened.get(kind, 0) + sum(
            float(r["anomaly_score"]) >= 0.5 for r in rows[CLEAN_HISTORY:])
        days[kind] = days.get(kind, 0) + (len(rows) - CLEAN_HISTORY) / 288
    if not days:
        sys.exit(f"no results under {results}/clean")
    print(f"stated: {stated:.3f} false alarms per series-day (threshold {threshold})")
    print("| series | false alarms | per series-day |")
    print("|---|---|---|")
    for kind in CLEAN_KINDS:
        if kind in days:
            rate = opened[kind] / days[kind]
            mark = " (above)" if rate > stated else ""
            print(f"| {kind} | {opened[kind]} | {rate:.3f}{mark} |")
    total = sum(opened.values()) / sum(days.values())
    print(f"| all | {sum(opened.values())} | {total:.3f} |")
    if total > stated:
        sys.exit(f"above the stated rate: {total:.3f} > {stated:.3f}")


def make(out):
    start = dt.datetime(2026, 1, 1)
    for b, base in enumerate(BASES):
        for k, kind in enumerate(KINDS):
            for n in range(REPS):
                rng = random.Random(1000 * b + 10 * k + n)
                os.makedirs(os.path.join(out, base), exist_ok=True)
                with open(os.path.join(out, base, f"{kind}_{n}.csv"), "w") as f:
                    f.write("timestamp,value\n")
                    for i, x in enumerate(series(base, kind, rng)):
                        t = start + dt.timedelta(minutes=5 * i)
                        f.write(f"{t:%Y-%m-%d %H:%M:%S},{x!r}\n")


def score(results):
    caught, alarms, files = {}, {}, {}
    for path in glob.glob(os.path.join(results, "*", "*.csv")):
        base = os.path.basename(os.path.dirname(path))
        kind = os.path.basename(path).split("_")[0]
        opened = [float(r["anomaly_score"]) >= 0.5 for r in csv.DictReader(open(path))]
        key = (base, kind)
        caught[key] = caught.get(key, 0) + any(opened[AT:AT + CAUGHT_WITHIN])
        alarms[base] = alarms.get(base, 0) + sum(opened[CLEAN_FROM:AT])
        files[base] = files.get(base, 0) + 1
    if not files:
        sys.exit(f"no results under {results}")
    print("| series | " + " | ".join(KINDS) + " | false alarms per 1,000 points |")
    print("|---" * (len(KINDS) + 2) + "|")
    for base in BASES:
        row = [f"{caught.get((base, k), 0)}/{REPS}" for k in KINDS]
        rate = 1000 * alarms.get(base, 0) / (files.get(base, 1) * (AT - CLEAN_FROM))
        print(f"| {base} | " + " | ".join(row) + f" | {rate:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "score":
        score(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "clean":
        clean(sys.argv[2])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "check":
        check(sys.argv[2], *map(float, sys.argv[3:]))
    else:
        sys.exit(__doc__)
