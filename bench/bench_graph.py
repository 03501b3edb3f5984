"""Benchmark of the graph engine (issue 13) against Captum's NeuronGuidedBackprop on resnet18.

    .venv/bin/python bench/bench_graph.py [--reps 3] [--layer layer3.1] [--units 64] [--threads 2] [--size 224]

Model: torchvision's resnet18 (``weights=None``), He-initialised conv and
linear weights and random batch-norm statistics (seed 0), at 224 px, one input
image, on the CPU, two torch threads by default (as issue 13 asks; on a machine
whose cores are busy elsewhere use ``--threads 1`` for steadier figures).
Captum (``pip install captum``; the ``bench`` extra) is a bench-only dependency.
Captum gets a copy of the model with out-of-place ReLUs (its hooks refuse
in-place ones); the engine gets the model as torchvision ships it.

Side by side in one run (the order rotating every repetition; medians):

* **one unit**: ``GraphEngine.project(rec, layer, u, method="guided")`` on the
  layer's most active unit, with the forward pass already done, against one
  ``NeuronGuidedBackprop(model, model.layer3[1]).attribute`` call on the same unit
  and position (Captum runs its own forward). Target: ratio >= 2 (aim 4).
* **K units**: one ``project_many`` call with the layer's K = 64 most active
  units, each at its strongest position, against K Captum calls. Target:
  ratio >= 3 (aim 8).

The floor: the multiply-adds of the dense backward pass from the layer to the
pixels (every conv's and linear's input gradient on the way down: the same
count as those layers' forward), per unit, and the time they would take at the
conv throughput this machine reaches in the model's own forward pass (its
multiply-adds over its time). The engine's one-channel step (the seeded unit's
filter only, until the first rectifier spreads the signal) does fewer.

Before timing, our projections are checked against Captum's (ours = Captum's x
the activation: guided backprop's rule is positively homogeneous; relative
error printed, must be < 1e-4).

Writes ``bench/results/graph.json`` and prints a Markdown table for ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from deconvlab.engine.graph import GraphEngine  # noqa: E402


@torch.no_grad()
def build_model(seed: int = 0) -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def multiply_adds(eng: GraphEngine, rec, layer: str | None) -> int:
    """Multiply-adds per image of the convs and linears at or below ``layer`` (None: all)."""
    stop = eng.node_of(layer) if layer else None
    total = 0
    for node in eng._order:
        if node.op == "call_module":
            m = eng.root.get_submodule(node.target)
            out = rec.values[node.name]
            if isinstance(m, nn.Conv2d):
                total += out[0].numel() * m.weight[0].numel()
            elif isinstance(m, nn.Linear):
                total += m.weight.numel()
        if node.name == stop:
            break
    return total


def error_vs_captum(ours: torch.Tensor, captum, value: list[float]) -> float:
    """Largest relative difference of ours from Captum's x the activation, over a few units."""
    errs = []
    for i in range(0, len(value), max(1, len(value) // 4)):
        ref = captum(i) * value[i]
        errs.append(float((ours[i] - ref).abs().max()) / max(float(ref.abs().max()), 1e-30))
    return max(errs)


def runs_for(eng, rec, x, layer, units, items, captum) -> dict:
    return {
        "forward": lambda: eng.forward(x),
        "ours_one": lambda: eng.project(rec, layer, units[0], method="guided"),
        "captum_one": lambda: captum(0),
        "ours_many": lambda: eng.project_many(rec, items, method="guided"),
        "captum_many": lambda: [captum(i) for i in range(len(units))],
    }


def measure(runs: dict, reps: int) -> dict:
    """Median seconds of each run, the order rotating every repetition."""
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(runs[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def print_table(r: dict) -> None:
    print(f"forward pass: {r['forward_ms']:.0f} ms ({r['forward_gmac']:.2f} GMAC, {r['gmac_per_s_forward']:.1f} "
          f"GMAC/s), {r['threads']} thread(s), load average {r['load_average']:.1f}; trace {r['trace_s']:.2f} s")
    print()
    print("| layer | ours, 1 unit | Captum, 1 call | ratio | floor | ours, K units | Captum, K calls | ratio | "
          "floor | K |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['layer']} | {r['ours_one_ms']:.0f} ms | {r['captum_one_ms']:.0f} ms | **{r['ratio_one']:.1f}x** | "
          f"{r['floor_one_ms']:.0f} ms | {r['ours_many_ms']:.0f} ms | {r['captum_many_ms']:.0f} ms | "
          f"**{r['ratio_many']:.1f}x** | {r['floor_many_ms']:.0f} ms | {r['units']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (medians)")
    ap.add_argument("--layer", default="layer3.1")
    ap.add_argument("--units", type=int, default=64, help="units in the batched call")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "graph.json"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        from captum.attr import NeuronGuidedBackprop
    except ImportError:
        print("bench_graph: captum is not installed: .venv/bin/pip install captum (the 'bench' extra)",
              file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")

    model = build_model()
    t0 = time.perf_counter()
    eng = GraphEngine(model, (3, a.size, a.size))
    trace_s = time.perf_counter() - t0
    x = torch.randn(1, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    rec = eng.forward(x)
    act = rec.activations[a.layer]
    units = [int(u) for u in act[0].flatten(1).amax(1).argsort(descending=True, stable=True)[:a.units]]
    flat = act[0, units].flatten(1).argmax(1)
    sel = [(u, int(f) // act.shape[-1], int(f) % act.shape[-1]) for u, f in zip(units, flat)]
    value = [float(act[0, u, y, xx]) for u, y, xx in sel]
    items = [(a.layer, u, None) for u in units]

    theirs = copy.deepcopy(model)
    for m in theirs.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    ngb = NeuronGuidedBackprop(theirs, theirs.get_submodule(a.layer))

    def captum(i):
        return ngb.attribute(x, neuron_selector=sel[i])[0]

    rel_err = error_vs_captum(eng.project_many(rec, items, method="guided"), captum, value)
    if not rel_err < 1e-4:
        print(f"{a.layer}: projections differ from Captum's (relative error {rel_err:.1e})", file=sys.stderr)
        return 1

    med = measure(runs_for(eng, rec, x, a.layer, units, items, captum), a.reps)

    fwd_macs = multiply_adds(eng, rec, None)
    bwd_macs = multiply_adds(eng, rec, a.layer)
    rate = fwd_macs / med["forward"]  # multiply-adds per second this machine reaches in the forward pass
    floor_s = bwd_macs / rate
    result = {
        "bench": "graph",
        "model": f"resnet18, random He weights, random batch-norm statistics, {a.size} px, one image",
        "layer": a.layer, "units": len(units), "method": "guided",
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "reps": a.reps,
        "load_average": os.getloadavg()[0], "trace_s": trace_s,
        "forward_ms": med["forward"] * 1e3,
        "ours_one_ms": med["ours_one"] * 1e3, "captum_one_ms": med["captum_one"] * 1e3,
        "ratio_one": med["captum_one"] / med["ours_one"],
        "ours_many_ms": med["ours_many"] * 1e3, "captum_many_ms": med["captum_many"] * 1e3,
        "ratio_many": med["captum_many"] / med["ours_many"],
        "forward_gmac": fwd_macs / 1e9, "backward_gmac_per_unit": bwd_macs / 1e9,
        "gmac_per_s_forward": rate / 1e9,
        "floor_one_ms": floor_s * 1e3, "floor_many_ms": floor_s * len(units) * 1e3,
        "max_rel_err_vs_captum": rel_err,
        "targets": {"ratio_one": 2.0, "ratio_many": 3.0, "aim_one": 4.0, "aim_many": 8.0},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print()
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
