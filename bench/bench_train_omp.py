"""Benchmark of the OpenMP wait policy under ``deconvlab train``: one training epoch per policy, side by side.

    .venv/bin/python bench/bench_train_omp.py [--images 640] [--size 160] [--reps 2]

Why: torch's CPU kernels run on libgomp (``torch/lib/libgomp.so.1`` in the wheel). Between two
parallel regions its worker threads either spin or sleep on a futex. The project sets
``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) everywhere, because threads that spin while idle made a
busy 2-core machine 3-10x slower. A training run on an otherwise quiet machine is the other case:
each of the thousands of parallel regions of a step then starts by waking a sleeping thread, and
``/proc/stat`` showed about 9% of both cores idle during a whole ``deconvlab train`` run.

What it times: ``bench_train.py``'s measurement (``training.train.train``, two epochs of the shipped
ResNet's recipe on the first ``--images`` Imagenette training images, the second epoch's
``epoch_s``) in a fresh process per variant, since libgomp reads its environment once, when torch is
loaded. The variants run in turn, ``--reps`` rounds, so that a change of the machine's speed falls on
all of them; the figure is each variant's median over PASSIVE's median with prefetch, the default
``deconvlab train`` setting.

=================  ==================================================  ========
variant            environment                                         prefetch
=================  ==================================================  ========
``passive``        ``OMP_WAIT_POLICY=PASSIVE`` (the project's)          on
``passive-nopf``   ``OMP_WAIT_POLICY=PASSIVE``                          off
``active``         ``OMP_WAIT_POLICY=ACTIVE`` (spin, never sleep)       on
``default``        neither set: libgomp's own (spin a while, sleep)     on
``spin-10k``       PASSIVE and ``GOMP_SPINCOUNT=10000``: spin, sleep    on
``spin-100k``      PASSIVE and ``GOMP_SPINCOUNT=100000``                on
=================  ==================================================  ========

The counts, from libgomp's manual (``GOMP_SPINCOUNT``): a waiting thread spins that many times, then
sleeps; unset, it is 0 under PASSIVE, 300,000 with no policy and 30 billion under ACTIVE. With more
OpenMP threads than CPUs it drops to 1000 (ACTIVE) or 100 (no policy).

Writes ``bench/results/train-omp.json`` and prints a Markdown table for ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_train import _epoch_s, add_epoch_args  # noqa: E402  (the same timed epoch and its options)

VARIANTS = {  # name: (environment to set, prefetch)
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, True),
    "passive-nopf": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, True),
    "default": ({}, True),
    "spin-10k": ({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}, True),
    "spin-100k": ({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "100000"}, True),
}
CLEARED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _child(args) -> int:
    """One measurement in this process, under the environment it was started with."""
    with tempfile.TemporaryDirectory() as tmp:
        t = _epoch_s(os.environ["DECONVLAB_DATA"], Path(tmp) / "run", args, args.prefetch == "on")
    print(json.dumps({"epoch_s": t}))
    return 0


def _measure(name: str, args) -> float:
    env_set, prefetch = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if k not in CLEARED} | env_set
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--prefetch", "on" if prefetch else "off",
           "--images", str(args.images), "--size", str(args.size), "--threads", str(args.threads),
           "--arch", args.arch, "--width", str(args.width)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["epoch_s"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_epoch_args(ap)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {','.join(VARIANTS)}")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefetch", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    data = os.environ.get("DECONVLAB_DATA", "")
    if not (data and (Path(data) / "train").is_dir()):
        print("bench_train_omp: DECONVLAB_DATA must name Imagenette (with train/ and val/)", file=sys.stderr)
        return 2
    if args.child:
        return _child(args)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or "passive" not in names:
        print(f"bench_train_omp: --variants: expected some of {list(VARIANTS)} including passive, got {names}",
              file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    for rep in range(args.reps):
        for n in names:
            times[n].append(_measure(n, args))
            print(f"rep {rep + 1} {n}: {times[n][-1]:.1f} s", flush=True)
    load.append(os.getloadavg()[0])
    base = statistics.median(times["passive"])
    res = {"arch": args.arch, "width": args.width, "size": args.size, "images": args.images,
           "threads": args.threads, "epoch_s": times,
           "speedup_vs_passive": {n: base / statistics.median(t) for n, t in times.items()},
           "load_avg_start_end": load}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "train-omp.json").write_text(json.dumps(res, indent=2))
    print("| variant | epoch (median) | vs passive |\n|---|---|---|")
    for n, t in times.items():
        print(f"| {n} | {statistics.median(t):.1f} s | **{base / statistics.median(t):.2f}x** |")
    print(f"{args.arch} x{args.width}, {args.size} px, {args.images // 64} steps, {args.reps} rounds; "
          f"1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
