"""Benchmark of the deconvnet engine (issue 2) against Captum's NeuronDeconvolution.

    .venv/bin/python bench/bench_projection.py [--reps 5] [--layers conv1 conv5 fc6] [--units 64] [--threads 1]

One thread by default (``--threads``): on a machine whose cores are busy
elsewhere, two OpenMP threads make every small op wait for a time slice and the
timings turn to noise (a forward pass went from 40 ms to 516 ms here).

Model: a half-width ZFNet (``ZFNetConfig(width=0.5, fc_size=1024, num_classes=10,
norm="none")``, He-initialised random weights, seed 0) at 224 px, one input
image, on the CPU. Captum (``pip install captum``; the ``bench`` extra) is a
bench-only dependency.

For each layer, side by side in one run (the order rotating every
repetition, so all share whatever else the machine is doing; medians):

* **one unit**: ``net.project(rec, layer, unit)`` on the layer's most active
  unit, with the forward pass already done, against one
  ``NeuronDeconvolution(module, net.layer(layer)).attribute`` call on the same
  unit at the same position (Captum runs its own forward). Target: ratio >= 4.
* **64 units**: one ``net.project_many`` call with the layer's 64 most active
  units (by their strongest activation; conv1 has 48), each at its strongest
  position, against 64 Captum calls. Target: ratio >= 10 (aim 20). Most active,
  not units 0..63: a dead unit projects to zeros, which the sparse step skips
  at no cost while Captum still runs its whole pass.
* **dense route**: the same two calls with ``sparse_step.ENABLED = False``
  (the three dense rules instead of the sparse unpool-rectify-filter step),
  to show what that step is worth.

Before timing, each layer's projections are checked against Captum's: the
deconvnet's point seed is the activation value, Captum's is 1, so ours must
equal Captum's times the activation (for positive activations: the deconv ReLU
rule is positively homogeneous; relative error printed, must be < 1e-4), and
the sparse and dense routes must agree.

Writes ``bench/results/projection.json`` and prints a Markdown table for
``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from deconvlab.engine import sparse_step  # noqa: E402
from deconvlab.net import Net  # noqa: E402
from deconvlab.nets import ModelMeta, ZFNetConfig, he_init, zfnet  # noqa: E402


def build_net() -> Net:
    cfg = ZFNetConfig(width=0.5, fc_size=1024, num_classes=10, norm="none")
    return Net(he_init(zfnet(cfg)).eval(), ModelMeta(arch="zfnet", config=cfg.to_dict()), device="cpu")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each measurement (medians)")
    ap.add_argument("--layers", nargs="*", default=["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"])
    ap.add_argument("--units", type=int, default=64, help="units in the batched call")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a busy machine OpenMP barriers swamp the timings; "
                         "0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "projection.json"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        from captum.attr import NeuronDeconvolution
    except ImportError:
        print("bench_projection: captum is not installed: .venv/bin/pip install captum (the 'bench' extra)",
              file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", module="captum")

    net = build_net()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rec = net.forward(x)
    fwd = [timed(lambda: net.forward(x)) for _ in range(a.reps)]
    rows = {}
    for layer in a.layers:
        act = rec.activations[layer]
        strength = act[0].flatten(1).amax(1) if act.dim() == 4 else act[0]
        units = [int(u) for u in strength.argsort(descending=True, stable=True)[:a.units]]
        nd = NeuronDeconvolution(net.module, net.layer(layer))
        if act.dim() == 4:
            ys, xs = Net.strongest(act, torch.zeros(len(units), dtype=torch.long), torch.tensor(units))
            sel = [(u, int(y), int(xx)) for u, y, xx in zip(units, ys, xs)]
            value = [float(act[0, u, y, xx]) for u, y, xx in sel]
        else:
            sel = [(u,) for u in units]
            value = [float(act[0, u]) for u in units]
        items = [(layer, u, None) for u in units]

        def captum(i):
            return nd.attribute(x, neuron_selector=sel[i])[0]

        def dense(fn):
            sparse_step.ENABLED = False
            try:
                return fn()
            finally:
                sparse_step.ENABLED = True

        # cross-checks: ours == captum * activation (deconv's ReLU rule is positively homogeneous,
        # so only for positive activations), and the sparse route == the dense one
        ours = net.project_many(rec, items)
        ref_dense = dense(lambda: net.project_many(rec, items))
        route_err = float((ours - ref_dense).abs().max()) / max(float(ref_dense.abs().max()), 1e-30)
        errs = []
        for i in range(0, len(units), max(1, len(units) // 8)):
            if value[i] <= 0:
                continue
            ref = captum(i) * value[i]
            scale = float(ref.abs().max())
            if scale > 0:
                errs.append(float((ours[i] - ref).abs().max()) / scale)
        rel_err = max(errs) if errs else float("nan")
        if not (rel_err < 1e-4 and route_err < 1e-4):
            print(f"{layer}: projections differ (vs Captum {rel_err:.1e}, sparse vs dense {route_err:.1e})",
                  file=sys.stderr)
            return 1

        runs = {
            "ours_one": lambda: net.project(rec, layer, units[0]),
            "dense_one": lambda: dense(lambda: net.project(rec, layer, units[0])),
            "captum_one": lambda: captum(0),
            "ours_many": lambda: net.project_many(rec, items),
            "dense_many": lambda: dense(lambda: net.project_many(rec, items)),
            "captum_many": lambda: [captum(i) for i in range(len(units))],
        }
        times = {name: [] for name in runs}
        names = list(runs)
        for r in range(a.reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(timed(runs[name]))
        med = {name: statistics.median(t) for name, t in times.items()}
        rows[layer] = {
            "units": len(units),
            "ours_one_ms": med["ours_one"] * 1e3, "dense_one_ms": med["dense_one"] * 1e3,
            "captum_one_ms": med["captum_one"] * 1e3,
            "ratio_one": med["captum_one"] / med["ours_one"],
            "ratio_one_dense": med["captum_one"] / med["dense_one"],
            "ours_many_ms": med["ours_many"] * 1e3, "dense_many_ms": med["dense_many"] * 1e3,
            "captum_many_ms": med["captum_many"] * 1e3,
            "ratio_many": med["captum_many"] / med["ours_many"],
            "ratio_many_dense": med["captum_many"] / med["dense_many"],
            "max_rel_err_vs_captum": rel_err, "max_rel_err_sparse_vs_dense": route_err,
        }
        print(f"{layer}: one {rows[layer]['ratio_one']:.1f}x (dense {rows[layer]['ratio_one_dense']:.1f}x), "
              f"{len(units)} units {rows[layer]['ratio_many']:.1f}x (dense {rows[layer]['ratio_many_dense']:.1f}x), "
              f"rel err {rel_err:.1e}", file=sys.stderr)

    result = {
        "bench": "projection",
        "model": "zfnet width 0.5, fc 1024, 10 classes, norm none, random weights, 224 px",
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "reps": a.reps,
        "forward_ms": statistics.median(fwd) * 1e3,
        "layers": rows,
        "targets": {"ratio_one": 4.0, "ratio_many": 10.0},
        "sparse_step": sparse_step.available(),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print()
    print(f"forward pass: {result['forward_ms']:.1f} ms, {result['threads']} thread(s)")
    print()
    print("| layer | ours, 1 unit | dense route | Captum, 1 call | ratio | ours, K units | dense route | "
          "Captum, K calls | ratio | K |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for layer, r in rows.items():
        print(f"| {layer} | {r['ours_one_ms']:.1f} ms | {r['dense_one_ms']:.1f} ms | {r['captum_one_ms']:.1f} ms | "
              f"**{r['ratio_one']:.1f}x** | {r['ours_many_ms']:.0f} ms | {r['dense_many_ms']:.0f} ms | "
              f"{r['captum_many_ms']:.0f} ms | **{r['ratio_many']:.1f}x** | {r['units']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
