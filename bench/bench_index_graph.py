"""Benchmark of the top-k index scan on a graph-engine net (issue 13): resnet18, scan vs plain forward.

    .venv/bin/python bench/bench_index_graph.py [--size 224] [--batch-size 64] [--batches 4] [--threads 2]
                                                [--record]

Issue 13's target: "The top-k index scan on resnet18 at least 0.8x of plain
forward throughput". Side by side in one run, on the same random batches
(torchvision's resnet18, ``weights=None``, seeded; random inputs: the cost
does not depend on what the images show), the order rotating each batch so
all share whatever else the machine is doing:

==================  =================================================================================
row                 what runs per batch
==================  =================================================================================
``forward``         ``net.module(x)``: the plain forward pass (the floor)
``scan``            what ``build_index`` runs: :func:`deconvlab.index.scan.scan_values` over the
                    layers the index picks (``index.scan_graph``'s rule: 20 of resnet18's 80) and
                    the :class:`~deconvlab.index.tracker.TopK` update
``scan, every``     the same over every layer of ``net.layers`` (one per fx node: 69): what
                    indexing everything would cost
``record``          (``--record``) ``net.forward(x)``, the engine's full record that keeps every
                    node's value: the route the streaming scan replaces; its peak memory is why
==================  =================================================================================

Each row: images/s and the throughput ratio to ``forward``, by wall time and by
the process's CPU time (on a machine shared with other work the CPU-time ratio
is the steadier one: waits for a core do not count). Writes ``bench/results/index-graph.json`` and
prints a Markdown table for ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see bench_index.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from deconvlab.index import TopK, argmax_positions, index_layers, scan_values  # noqa: E402
from deconvlab.index.scan import LayerInfo  # noqa: E402
from deconvlab.index.scan_graph import graph_index_layers  # noqa: E402


def make_net(size: int):
    import torchvision

    from deconvlab.net import Net

    torch.manual_seed(0)
    return Net.from_module(torchvision.models.resnet18(weights=None), input_size=size, name="resnet18-random")


def rows(net, record: bool) -> dict:
    """name -> (callable(x, first image index), its layers or None)."""
    chosen = index_layers(net)
    every = [LayerInfo(**d) for d in graph_index_layers(net, every=True)]
    out = {"forward": (lambda x, s: net.module(x), None)}
    for name, layers in (("scan", chosen), ("scan, every", every)):
        tk = TopK(sum(L.units for L in layers), 9)

        def run(x, s, layers=layers, tk=tk):
            v, maps = scan_values(net, x, layers, floor=tk.values[:, -1])  # what build_index does per batch
            tk.update(v.numpy(), np.arange(s, s + len(x)), partial(argmax_positions, maps, layers),
                      np.zeros(len(x), np.uint64))
        out[name] = (run, layers)
    if record:
        out["record"] = (lambda x, s: net.forward(x, switches=False), None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--record", action="store_true", help="also time net.forward's full record (GBs at 224 px)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "index-graph.json"))
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    net = make_net(a.size)
    todo = rows(net, a.record)
    names = list(todo)
    t = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    g = torch.Generator().manual_seed(1)
    n = 0
    with torch.inference_mode():
        todo["forward"][0](torch.randn(2, 3, a.size, a.size), 0)  # warm-up
        for b in range(a.batches):
            x = torch.randn(a.batch_size, 3, a.size, a.size, generator=g)
            for name in names[b % len(names):] + names[:b % len(names)]:
                t0, c0 = time.perf_counter(), time.process_time()
                todo[name][0](x, n)
                t[name] += time.perf_counter() - t0
                cpu[name] += time.process_time() - c0
            n += len(x)
    res = {"model": "resnet18 (weights=None, seeded)", "size": a.size, "batch_size": a.batch_size, "images": n,
           "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "rows": {}}
    for name in names:
        layers = todo[name][1]
        res["rows"][name] = {"images_per_s": n / t[name], "over_forward": t["forward"] / t[name],
                             "cpu_s_per_image": cpu[name] / n, "cpu_over_forward": cpu["forward"] / cpu[name],
                             "layers": len(layers) if layers else None,
                             "units": sum(L.units for L in layers) if layers else None}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(table(res))
    return 0


def table(res: dict) -> str:
    lines = [f"{res['model']}, {res['size']} px, batch {res['batch_size']}, {res['images']} images, "
             f"{res['torch_threads']} torch threads, {res['cpus']} CPUs (load average {res['load_average']:.1f})",
             "", "| row | layers (units) | images/s | / forward (wall) | / forward (CPU time) | target |",
             "|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        lu = f"{r['layers']} ({r['units']})" if r["layers"] else ""
        target = ">= 0.8x" if name == "scan" else ""
        lines.append(f"| {name} | {lu} | {r['images_per_s']:.1f} | **{r['over_forward']:.2f}x** | "
                     f"{r['cpu_over_forward']:.2f}x | {target} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
