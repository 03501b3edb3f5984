"""Benchmark of the deconvnet engine (issue 2) against Captum's NeuronDeconvolution.

    .venv/bin/python bench/bench_projection.py [--reps 5] [--layers conv1 conv5 fc6] [--units 64] [--threads 1]

One thread by default (``--threads``): on a machine whose cores are busy
elsewhere, two OpenMP threads make every small op wait for a time slice and the
timings turn to noise (a forward pass went from 40 ms to 516 ms here).

Model: a half-width ZFNet (``ZFNetConfig(width=0.5, fc_size=1024, num_classes=10,
norm="none")``, He-initialised random weights, seed 0) at 224 px, one input
image, on the CPU. Captum (``pip install captum``; the ``bench`` extra) is a
bench-only dependency.

For each layer, side by side in one run (the order alternating every
repetition, so both share whatever else the machine is doing; medians):

* **one unit**: ``net.project(rec, layer, unit)`` with the forward pass already
  done, against one ``NeuronDeconvolution(module, net.layer(layer)).attribute``
  call on the same unit at the same position (Captum runs its own forward).
  Target: ratio >= 4.
* **64 units**: one ``net.project_many`` call with units 0..63 of the layer,
  each at its strongest position, against 64 Captum calls. Target: ratio >= 10
  (aim 20).

Before timing, each layer's projections are checked against Captum's: the
deconvnet's point seed is the activation value, Captum's is 1, so ours must
equal Captum's times the activation (relative error printed; must be < 1e-4).

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
        units = list(range(min(a.units, act.shape[1])))
        nd = NeuronDeconvolution(net.module, net.layer(layer))
        if act.dim() == 4:
            ys, xs = Net.strongest(act, torch.zeros(len(units), dtype=torch.long), torch.tensor(units))
            sel = [(u, int(y), int(xx)) for u, y, xx in zip(units, ys, xs)]
            value = [float(act[0, u, y, xx]) for u, y, xx in sel]
        else:
            sel = [(u,) for u in units]
            value = [float(act[0, u]) for u in units]

        def captum(i):
            return nd.attribute(x, neuron_selector=sel[i])[0]

        # cross-check: ours == captum * activation (deconv's ReLU rule is positively homogeneous)
        ours = net.project_many(rec, [(layer, u, None) for u in units])
        errs = []
        for i in range(0, len(units), max(1, len(units) // 8)):
            ref = captum(i) * value[i]
            scale = float(ref.abs().max())
            if scale > 0:
                errs.append(float((ours[i] - ref).abs().max()) / scale)
        rel_err = max(errs) if errs else float("nan")

        one_ours, one_cap, many_ours, many_cap = [], [], [], []
        for r in range(a.reps):
            pair = [("ours", lambda: net.project(rec, layer, units[0])), ("captum", lambda: captum(0))]
            for name, fn in (pair if r % 2 == 0 else pair[::-1]):
                (one_ours if name == "ours" else one_cap).append(timed(fn))
            pair = [("ours", lambda: net.project_many(rec, [(layer, u, None) for u in units])),
                    ("captum", lambda: [captum(i) for i in range(len(units))])]
            for name, fn in (pair if r % 2 == 0 else pair[::-1]):
                (many_ours if name == "ours" else many_cap).append(timed(fn))
        med = statistics.median
        rows[layer] = {
            "units": len(units),
            "ours_one_ms": med(one_ours) * 1e3, "captum_one_ms": med(one_cap) * 1e3,
            "ratio_one": med(one_cap) / med(one_ours),
            "ours_many_ms": med(many_ours) * 1e3, "captum_many_ms": med(many_cap) * 1e3,
            "ratio_many": med(many_cap) / med(many_ours),
            "max_rel_err_vs_captum": rel_err,
        }
        print(f"{layer}: one {rows[layer]['ratio_one']:.1f}x, {len(units)} units {rows[layer]['ratio_many']:.1f}x, "
              f"rel err {rel_err:.1e}", file=sys.stderr)

    result = {
        "bench": "projection",
        "model": "zfnet width 0.5, fc 1024, 10 classes, norm none, random weights, 224 px",
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "reps": a.reps,
        "forward_ms": statistics.median(fwd) * 1e3,
        "layers": rows,
        "targets": {"ratio_one": 4.0, "ratio_many": 10.0},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print()
    print(f"forward pass: {result['forward_ms']:.1f} ms, {result['threads']} thread(s)")
    print()
    print("| layer | ours, 1 unit (ms) | Captum, 1 unit (ms) | ratio | ours, K units (ms) | Captum, K calls (ms) | ratio | K | rel. err vs Captum |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer, r in rows.items():
        print(f"| {layer} | {r['ours_one_ms']:.1f} | {r['captum_one_ms']:.1f} | {r['ratio_one']:.1f}x | "
              f"{r['ours_many_ms']:.0f} | {r['captum_many_ms']:.0f} | {r['ratio_many']:.1f}x | {r['units']} | "
              f"{r['max_rel_err_vs_captum']:.0e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
