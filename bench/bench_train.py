"""Benchmark of ``deconvlab train``'s ``prefetch``: a training epoch with and without cropping the next batch in a second thread.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_train.py [--arch resnet18] [--width 0.5]
        [--size 160] [--images 640] [--reps 2] [--threads 2]

What it times: ``training.train.train`` on the first ``--images`` training
images of ``DECONVLAB_DATA`` (Imagenette), two epochs at ``--size`` px, batch
64, the shipped ResNet's recipe otherwise; the second epoch's ``epoch_s`` (the
first warms the allocator up). Runs with and without ``prefetch`` alternate
(off, on, off, on, ...) so that a change in the machine's load falls on both;
the ratio of their medians is the figure. The two runs also end with the same
weights (``tests/training/test_train.py`` checks that on a small set), so the
ratio is the whole effect of the thread. Writes ``bench/results/train.json``
and prints a Markdown row for ``bench/README.md``, with the load average.

Why it helps: torchvision's CPU ``roi_align`` (the batched random-resized
crop) runs on one thread, and the model's step leaves the second core partly
idle; the crop of batch i+1 fills it while batch i trains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _epoch_s(data: str, out: Path, args, prefetch: bool) -> float:
    from deconvlab.training.train import TrainConfig, read_metrics, train

    cfg = TrainConfig(data=data, arch=args.arch, width=args.width, out=str(out), epochs=2, batch_size=64,
                      input_size=args.size, sizes="", renorm_rms=0, snapshots="", limit=args.images,
                      val_limit=64, threads=args.threads, progress=False, prefetch=prefetch, seed=0)
    train(cfg)
    return read_metrics(out)[-1]["epoch_s"]


def add_epoch_args(ap: argparse.ArgumentParser) -> None:
    """The options of the timed epoch (``_epoch_s``), shared with ``bench_train_omp.py``."""
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--images", type=int, default=640, help="training images (steps = images / 64; at least 64)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_epoch_args(ap)
    args = ap.parse_args(argv)
    data = os.environ.get("DECONVLAB_DATA", "")
    if not (data and (Path(data) / "train").is_dir()):
        print("bench_train: DECONVLAB_DATA must name Imagenette (with train/ and val/)", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, prefetch in (("off", False), ("on", True)):
                t = _epoch_s(data, Path(tmp) / f"{name}{rep}", args, prefetch)
                times[name].append(t)
                print(f"rep {rep + 1} prefetch {name}: {t:.1f} s", flush=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    res = {"arch": args.arch, "width": args.width, "size": args.size, "images": args.images,
           "threads": args.threads, "epoch_s": times, "speedup": off / on, "load_avg": os.getloadavg()}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "train.json").write_text(json.dumps(res, indent=2))
    steps = args.images // 64
    print(f"| {args.arch} x{args.width} | {args.size} px | {steps} steps | {off:.1f} s | {on:.1f} s | "
          f"**{off / on:.2f}x** | {res['load_avg'][0]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
