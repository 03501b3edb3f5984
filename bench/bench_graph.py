"""Benchmark of the graph engine (issue 13) against Captum's NeuronGuidedBackprop on resnet18.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_graph.py [--reps 3] [--layers layer3.1,layer1.1]
        [--units 64] [--threads 2] [--size 224]

Model: torchvision's resnet18 (``weights=None``), He-initialised conv and
linear weights and random batch-norm statistics (seed 0), at 224 px, one input
image, on the CPU, two torch threads by default (as issue 13 asks; on a machine
whose cores are busy elsewhere use ``--threads 1`` for steadier figures).
Captum (``pip install captum``; the ``bench`` extra) is a bench-only dependency.
Captum gets a copy of the model with out-of-place ReLUs (its hooks refuse
in-place ones); the engine gets the model as torchvision ships it.

Side by side in one run, per layer (``layer3.1``, the issue's, and ``layer1.1``,
where windows matter more; the order rotating every repetition; medians), four
columns: the engine as it runs by default (windows, but whole maps for a seed whose
windows hold over ``WHOLE_MAP_FRACTION`` of the maps), the engine with windows for
every seed (``whole_map_fraction = 1``), the engine on whole maps (``window=False``)
and Captum:

* **one unit**: ``GraphEngine.project(rec, layer, u, method="guided")`` on the
  layer's most active unit, with the forward pass already done, against one
  ``NeuronGuidedBackprop(model, model.layer3[1]).attribute`` call on the same unit
  and position (Captum runs its own forward). Target: ratio >= 2 (aim 4).
* **K units**: one ``project_many`` call with the layer's K = 64 most active
  units, each at its strongest position, against K Captum calls. Target:
  ratio >= 3 (aim 8).

The floor: the multiply-adds of the backward pass from the layer to the pixels
(every conv's input gradient on the way down), over the windows the engine used
(``GraphEngine.last_visit.macs``, counted as if every channel carried signal)
and over whole maps, and the time they take at the conv throughput this machine
reaches in the model's own forward pass (its multiply-adds over its time). The
engine's one-channel step (the seeded unit's filter only, until the first conv
spreads the signal) does fewer than this count.

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


def forced_windows(eng, fn):
    """``fn`` with every point seed on windows, however much of the maps they hold."""
    def run():
        kept, eng.whole_map_fraction = eng.whole_map_fraction, 1.0
        try:
            return fn()
        finally:
            eng.whole_map_fraction = kept
    return run


def runs_for(eng, rec, x, layer, units, items, captum) -> dict:
    return {
        "auto_one": lambda: eng.project(rec, layer, units[0], method="guided"),
        "win_one": forced_windows(eng, lambda: eng.project(rec, layer, units[0], method="guided", window=True)),
        "whole_one": lambda: eng.project(rec, layer, units[0], method="guided", window=False),
        "captum_one": lambda: captum(0),
        "auto_many": lambda: eng.project_many(rec, items, method="guided"),
        "win_many": forced_windows(eng, lambda: eng.project_many(rec, items, method="guided", window=True)),
        "whole_many": lambda: eng.project_many(rec, items, method="guided", window=False),
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


def macs_of(eng, fn) -> int:
    fn()
    return eng.last_visit.macs


def print_table(res: dict) -> None:
    print(f"forward pass: {res['forward_ms']:.0f} ms ({res['forward_gmac']:.2f} GMAC, {res['gmac_per_s_forward']:.1f} "
          f"GMAC/s), {res['threads']} thread(s), load average {res['load_average']:.1f}; trace {res['trace_s']:.2f} s")
    print()
    print("| layer | units | default | windows | whole maps | Captum | ratio (default) | ratio (windows) | "
          "ratio (whole maps) | floor (windows) | floor (whole maps) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res["layers"]:
        for k, label in (("one", "1"), ("many", str(r["units"]))):
            print(f"| {r['layer']} | {label} | {r[f'auto_{k}_ms']:.0f} ms | {r[f'win_{k}_ms']:.0f} ms | "
                  f"{r[f'whole_{k}_ms']:.0f} ms | {r[f'captum_{k}_ms']:.0f} ms | **{r[f'ratio_{k}_auto']:.1f}x** | "
                  f"{r[f'ratio_{k}']:.1f}x | {r[f'ratio_{k}_whole']:.1f}x | "
                  f"{r[f'floor_{k}_ms']:.0f} ms | {r[f'floor_{k}_whole_ms']:.0f} ms |")


def bench_layer(eng, model, rec, x, layer: str, K: int, reps: int, rate: float, NeuronGuidedBackprop) -> dict:
    act = rec.activations[layer]
    units = [int(u) for u in act[0].flatten(1).amax(1).argsort(descending=True, stable=True)[:K]]
    flat = act[0, units].flatten(1).argmax(1)
    sel = [(u, int(f) // act.shape[-1], int(f) % act.shape[-1]) for u, f in zip(units, flat)]
    value = [float(act[0, u, y, xx]) for u, y, xx in sel]
    items = [(layer, u, None) for u in units]
    theirs = copy.deepcopy(model)
    for m in theirs.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    ngb = NeuronGuidedBackprop(theirs, theirs.get_submodule(layer))

    def captum(i):
        return ngb.attribute(x, neuron_selector=sel[i])[0]

    win = forced_windows(eng, lambda: eng.project_many(rec, items, method="guided", window=True))()
    whole = eng.project_many(rec, items, method="guided", window=False)
    rel_err = error_vs_captum(win, captum, value)
    rel_win = float((win - whole).abs().max() / whole.abs().max())
    if not (rel_err < 1e-4 and rel_win < 1e-5):
        raise SystemExit(f"{layer}: projections differ (vs Captum {rel_err:.1e}, windows vs whole maps {rel_win:.1e})")
    med = measure(runs_for(eng, rec, x, layer, units, items, captum), reps)
    m = {k: macs_of(eng, fn) for k, fn in (
        ("one", forced_windows(eng, lambda: eng.project(rec, layer, units[0], method="guided"))),
        ("one_whole", lambda: eng.project(rec, layer, units[0], method="guided", window=False)),
        ("many", forced_windows(eng, lambda: eng.project_many(rec, items, method="guided"))),
        ("many_whole", lambda: eng.project_many(rec, items, method="guided", window=False)))}
    out = {"layer": layer, "units": len(units), "max_rel_err_vs_captum": rel_err, "max_rel_windows_vs_whole": rel_win}
    for k in ("one", "many"):
        out.update({f"auto_{k}_ms": med[f"auto_{k}"] * 1e3, f"ratio_{k}_auto": med[f"captum_{k}"] / med[f"auto_{k}"],
                    f"win_{k}_ms": med[f"win_{k}"] * 1e3, f"whole_{k}_ms": med[f"whole_{k}"] * 1e3,
                    f"captum_{k}_ms": med[f"captum_{k}"] * 1e3,
                    f"ratio_{k}": med[f"captum_{k}"] / med[f"win_{k}"],
                    f"ratio_{k}_whole": med[f"captum_{k}"] / med[f"whole_{k}"],
                    f"backward_gmac_{k}": m[k] / 1e9, f"backward_gmac_{k}_whole": m[f"{k}_whole"] / 1e9,
                    f"floor_{k}_ms": m[k] / rate * 1e3, f"floor_{k}_whole_ms": m[f"{k}_whole"] / rate * 1e3})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (medians)")
    ap.add_argument("--layers", default="layer3.1,layer1.1")
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
    fwd_s = statistics.median(timed(lambda: eng.forward(x)) for _ in range(max(a.reps, 3)))
    fwd_macs = multiply_adds(eng, rec, None)
    rate = fwd_macs / fwd_s  # multiply-adds per second this machine reaches in the forward pass
    layers = [bench_layer(eng, model, rec, x, layer, a.units, a.reps, rate, NeuronGuidedBackprop)
              for layer in a.layers.split(",")]
    result = {
        "bench": "graph",
        "model": f"resnet18, random He weights, random batch-norm statistics, {a.size} px, one image",
        "method": "guided", "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "reps": a.reps,
        "load_average": os.getloadavg()[0], "trace_s": trace_s, "forward_ms": fwd_s * 1e3,
        "forward_gmac": fwd_macs / 1e9, "gmac_per_s_forward": rate / 1e9, "layers": layers,
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
