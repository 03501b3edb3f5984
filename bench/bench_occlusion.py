"""Benchmark of occlusion sensitivity (issue 5, Fig. 7) against Captum's ``Occlusion``.

    .venv/bin/python bench/bench_occlusion.py [--reps 3] [--size 32] [--stride 8] [--device cpu|cuda]

Model: a half-width ZFNet (``ZFNetConfig(width=0.5, fc_size=1024, num_classes=10,
norm="none")``, the default model's architecture, He-initialised random
weights, seed 0) at 224 px, one input (a random normal image: the cost does
not depend on the content). Captum (``pip install captum``; the ``bench``
extra) is a bench-only dependency.

Side by side in one run, the order rotating every repetition so that all
share whatever else the machine is doing (medians of wall time):

* **captum**: ``Occlusion(softmax(model(x))).attribute(x, sliding_window_shapes=(3, s, s),
  strides=(3, t, t), baselines=0, target=top-1)`` with Captum's default
  ``perturbations_per_eval=1`` (the baseline of the issue: 10.0 s for
  s=32, t=8 on this machine before work began);
* **captum_batched**: the same with ``perturbations_per_eval=64``;
* **full**: ``deconvlab.analyses.occlusion(..., method="full")``: every occluded image
  through the whole network, in batches of 128;
* **incremental**: ``deconvlab.analyses.occlusion(...)``, the default: Krypton-style
  incremental recomputation.

Ours computes all three Fig. 7 maps (feature-map activation, class
probability, top class); Captum computes only the class-probability
attribution. Before timing, the results are cross-checked: incremental equals
full (max abs differences printed), and Captum's attribution is rebuilt from
our probability map (each pixel: the mean over the windows covering it of
base probability minus occluded probability) and must match to 1e-5.

Targets: ``captum / incremental`` >= 3 (aim 5). Writes
``bench/results/occlusion.json`` and prints a Markdown table for ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from deconvlab.nets import ZFNetConfig, he_init, zfnet  # noqa: E402
from deconvlab.analyses.occlusion import occlusion  # noqa: E402


def captum_from_ours(prob: np.ndarray, base: float, size: int, stride: int, hw: tuple[int, int]) -> np.ndarray:
    """Captum's per-pixel occlusion attribution rebuilt from our probability map."""
    total = np.zeros(hw, np.float64)
    count = np.zeros(hw, np.float64)
    for i in range(prob.shape[0]):
        for j in range(prob.shape[1]):
            y, x = i * stride, j * stride
            total[y:y + size, x:x + size] += base - prob[i, j]
            count[y:y + size, x:x + size] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--layer", default="conv5")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-captum-default", action="store_true",
                    help="leave out Captum with perturbations_per_eval=1 (slow on a GPU machine's CPU budget)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "occlusion.json"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from captum.attr import Occlusion

    dev = torch.device(a.device)
    model = he_init(zfnet(ZFNetConfig(num_classes=10, width=0.5, fc_size=1024, norm="none"))).eval().to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)[0]
    cls = int(probs.argmax())

    def fwd(inp):
        return torch.softmax(model(inp), 1)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_captum(ppe):
        with torch.no_grad():
            return Occlusion(fwd).attribute(x, sliding_window_shapes=(3, a.size, a.size),
                                            strides=(3, a.stride, a.stride), baselines=0, target=cls,
                                            perturbations_per_eval=ppe)

    def run_ours(method):
        return occlusion(model, x, a.size, a.stride, a.layer, class_index=cls, method=method)

    # correctness first
    inc, full = run_ours("incremental"), run_ours("full")
    checks = {
        "activation_max_abs_diff": float(np.abs(inc.activation - full.activation).max()),
        "activation_scale": float(np.abs(full.activation).max()),
        "probability_max_abs_diff": float(np.abs(inc.probability - full.probability).max()),
        "top_class_mismatches": int((inc.top_class != full.top_class).sum()),
    }
    cap = run_captum(64)[0, 0].float().cpu().numpy()
    rebuilt = captum_from_ours(inc.probability.astype(np.float64), inc.base_probability, a.size, a.stride,
                               tuple(x.shape[2:]))
    checks["captum_attribution_max_abs_diff"] = float(np.abs(cap - rebuilt).max())
    checks["captum_attribution_scale"] = float(np.abs(cap).max())
    ok = checks["captum_attribution_max_abs_diff"] <= 1e-5 and checks["probability_max_abs_diff"] <= 1e-5
    print(json.dumps(checks, indent=1), flush=True)

    runs = {"incremental": lambda: run_ours("incremental"), "full": lambda: run_ours("full"),
            "captum_batched": lambda: run_captum(64)}
    if not a.skip_captum_default:
        runs["captum"] = lambda: run_captum(1)
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for rep in range(a.reps):
        for k in names[rep % len(names):] + names[:rep % len(names)]:
            sync()
            t = time.perf_counter()
            runs[k]()
            sync()
            times[k].append(time.perf_counter() - t)
            print(f"rep {rep} {k}: {times[k][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    gh, gw = inc.grid
    res = {
        "bench": "occlusion", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "model": "zfnet width 0.5, fc 1024, 10 classes, norm none, 224 px, random He init",
        "size": a.size, "stride": a.stride, "layer": a.layer, "positions": gh * gw, "reps": a.reps,
        "seconds": times, "median_s": med, "checks": checks, "checks_ok": ok,
        "ratio_captum_over_incremental": med["captum"] / med["incremental"] if "captum" in med else None,
        "ratio_captum_batched_over_incremental": med["captum_batched"] / med["incremental"],
        "ratio_full_over_incremental": med["full"] / med["incremental"],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print()
    print(f"| device | window/stride | positions | Captum (ppe=1) | Captum (ppe=64) | ours, full | ours, incremental "
          f"| Captum / ours | Captum ppe=64 / ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    cd = f"{med['captum']:.2f} s" if "captum" in med else "-"
    r1 = f"{res['ratio_captum_over_incremental']:.1f}x" if res["ratio_captum_over_incremental"] else "-"
    print(f"| {res['device_name']} ({res['threads']} threads) | {a.size}/{a.stride} | {gh * gw} | {cd} | "
          f"{med['captum_batched']:.2f} s | {med['full']:.2f} s | {med['incremental']:.2f} s | {r1} | "
          f"{res['ratio_captum_batched_over_incremental']:.1f}x |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
