"""``deconvlab sanity``: Adebayo et al.'s parameter-randomisation test over a data set (issue 15).

    deconvlab sanity --model zfnet-imagenette --images 100 --layers conv2 conv5 fc8 --out DIR

For each of ``--images`` val images (drawn with ``--seed``) and each layer,
one unit: the layer's strongest for that image (the largest maximum over
positions of a conv map; for an fc layer the largest value, so fc8's is the
predicted class). Its point-seed projection by each method is recomputed
while the weights it passes through are re-initialised (``deconvlab.sanity``:
which modules, which initialiser, and how the numbers are computed), images
in batches of ``--batch``, each model run once per batch.

It writes, through ``analyses.report.write_report``:

=================  ==================================================================================
file               what
=================  ==================================================================================
``sanity.md``      per layer, mode, method and step: images, the share whose randomised unit is
                   silent at the seed, mean (sd) Spearman and mean SSIM with the trained projection,
                   mean Spearman with the input's Sobel edge map (the "edge detector")
``sanity.json``    the same rows, the options, the wall time, the images the figure shows
``sanity_images.   the images and, per layer, mode and image: the unit, seed, box and every step's
json``             numbers (compact, 3 decimals)
``sanity.png``     like Adebayo et al.'s Fig. 2 (one image: the trained projection, then each
                   cascading step, per method and layer) above their Fig. 4's curves (mean rank
                   correlation and SSIM against the number of layers randomised; the edge map's
                   correlation with the trained projections dotted)
=================  ==================================================================================

(The summary and the figure live here, not in ``analyses/sanity.py``, which holds the test itself.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .options import Command, data_path, plain_args, source_args

DEFAULT_LAYERS = ("conv2", "conv5", "fc8")
FIELDS = ("spearman", "ssim", "edge_spearman", "seed_value")


def _options(p) -> None:
    from ..analyses.sanity import METHODS, MODES

    source_args(p)
    p.add_argument("--images", type=int, default=100, help="val images, drawn with --seed (0: all)")
    p.add_argument("--layers", nargs="*", default=list(DEFAULT_LAYERS))
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--modes", nargs="*", default=["cascading"], choices=list(MODES))
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw and of the random weights")
    p.add_argument("--batch", type=int, default=10, help="images per forward pass")
    p.add_argument("--out", default="runs/analyses/sanity", help="folder for sanity.md, .json and .png")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def strongest_units(net, x, layer: str) -> list[int]:
    """Per image of ``x``: the unit of ``layer`` with the largest activation (a map's maximum)."""
    import torch

    with torch.inference_mode():
        a = net.activation(net.forward(x, switches=False), layer)
    return a.reshape(a.shape[0], a.shape[1], -1).amax(dim=2).argmax(dim=1).tolist()


def _round(v, field: str = ""):
    """3 decimals; a seed value 4 significant digits (a tiny one is not zero: only 0 is silent)."""
    if v is None:
        return None
    return float(f"{float(v):.4g}") if field == "seed_value" else round(float(v), 3)


def _run_layer(net, x_all, layer, mode, args, say) -> tuple[list, tuple]:
    """Every image's numbers for one layer and mode: ``(per-image records, (index, {method: result},
    fires))`` of the example the figure shows: the first image whose unit fires at every step (else
    the first image)."""
    from ..analyses.sanity import randomization_batch

    records, example = [], None
    for s in range(0, len(x_all), args.batch):
        x = x_all[s:s + args.batch]
        units = strongest_units(net, x, layer)
        results = randomization_batch(net, x, layer, units, args.methods, mode, args.seed)
        for i, r in enumerate(results):
            first = next(iter(r.values()))
            records.append({"unit": units[i], "position": first.position, "box": list(first.box),
                            "steps": [list(st.randomized) for st in first.steps],
                            **{m: {f: [_round(getattr(st, f), f) for st in res.steps] for f in FIELDS}
                               for m, res in r.items()}})
            fires = all(st.seed_value for st in first.steps)
            if example is None or (fires and not example[2]):  # the first image whose unit fires at every step
                example = (s + i, dict(r), fires)
        say(f"{layer} {mode}: {min(s + args.batch, len(x_all))}/{len(x_all)} images")
    return records, example


def summary_rows(records: list, layer: str, mode: str, methods) -> list[dict]:
    """One row per method and step: means over the images (Spearman and SSIM over those whose
    randomised unit still fires at the seed)."""
    rows = []
    for m in methods:
        for k, names in enumerate(records[0]["steps"]):
            vals = {f: [r[m][f][k] for r in records] for f in FIELDS}
            live = [i for i, v in enumerate(vals["seed_value"]) if v]
            sp = [vals["spearman"][i] for i in live if vals["spearman"][i] is not None]
            ss = [vals["ssim"][i] for i in live if vals["ssim"][i] is not None]
            ed = [vals["edge_spearman"][i] for i in live if vals["edge_spearman"][i] is not None]
            rows.append({"layer": layer, "mode": mode, "method": m, "step": k,
                         "randomized": names[-1] if mode == "cascading" and names else ",".join(names) or "-",
                         "images": len(records), "silent": round(1 - len(live) / len(records), 3),
                         "spearman": _round(np.mean(sp)) if sp else None, "spearman_sd": _round(np.std(sp)) if sp else None,
                         "ssim": _round(np.mean(ss)) if ss else None, "edge_spearman": _round(np.mean(ed)) if ed else None})
    return rows


def table(rows: list, head: str) -> str:
    """The rows as Markdown (``randomized``: down to that layer in cascading mode; that layer alone
    in independent mode)."""
    out = [head, "", "| layer | mode | method | step | randomized | images | silent | Spearman (sd) | SSIM | "
           "edge Spearman |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = (lambda v: "-" if v is None else f"{v:.3f}")
        sp = "-" if r["spearman"] is None else f"{r['spearman']:.3f} ({r['spearman_sd']:.3f})"
        out.append(f"| {r['layer']} | {r['mode']} | {r['method']} | {r['step']} | {r['randomized']} | "
                   f"{r['images']} | {r['silent']:.2f} | {sp} | {f(r['ssim'])} | {f(r['edge_spearman'])} |")
    return "\n".join(out) + "\n"


def _tile(res, k: int) -> np.ndarray:
    from ..render import projection_rgb

    t, l, b, r = res.box
    return projection_rgb(res.steps[k].projection)[t:b, l:r]


def figure(examples: dict, rows: list, images: np.ndarray, methods):
    """Fig. 2 (one image's projections along the cascade, per layer: ``examples[layer] = (index,
    {method: result}, fires)``) over Fig. 4 (mean curves); a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    layers = list(examples)
    cols = 1 + max(len(next(iter(examples[L][1].values())).steps) for L in layers)
    n_rows = len(layers) * len(methods)
    fig = Figure(figsize=(1.1 * cols, 1.1 * n_rows + 2.6))
    grid = fig.add_gridspec(n_rows + 2, cols, height_ratios=[1] * n_rows + [0.25, 2.2])
    for li, L in enumerate(layers):
        for mi, m in enumerate(methods):
            index, res, row = examples[L][0], examples[L][1][m], li * len(methods) + mi
            t, l, b, r = res.box
            tiles = [images[index][t:b, l:r]] + [_tile(res, k) for k in range(len(res.steps))]
            for c, tile in enumerate(tiles):
                ax = fig.add_subplot(grid[row, c])
                ax.imshow(tile, interpolation="antialiased")
                ax.set_xticks([]), ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"{L} {m}\nimage {index}", fontsize=6)
                if mi == 0 and c:
                    names = res.steps[c - 1].randomized
                    ax.set_title("trained" if not names else f"-> {names[-1]}", fontsize=6)
    for li, L in enumerate(layers):
        ax = fig.add_subplot(grid[n_rows + 1, li * cols // len(layers):(li + 1) * cols // len(layers)])
        for m in methods:
            rs = [r for r in rows if r["layer"] == L and r["method"] == m and r["mode"] == "cascading"]
            line = ax.plot([r["step"] for r in rs], [r["spearman"] for r in rs], marker="o", ms=3, label=m)[0]
            ax.plot([r["step"] for r in rs], [r["ssim"] for r in rs], ls="--", color=line.get_color())
            if rs[0]["edge_spearman"] is not None:
                ax.axhline(rs[0]["edge_spearman"], ls=":", color=line.get_color())
        ax.set_title(f"{L}: Spearman (-), SSIM (--), edge (:)", fontsize=7)
        ax.set_xlabel("layers randomised", fontsize=7)
        ax.set_ylim(-0.2, 1.02), ax.tick_params(labelsize=6)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if li == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def _load_images(net, args):
    from ..analyses.evolution import normalise
    from ..data import decoded, list_split
    from ..training.train import _subset

    sp = list_split(data_path(args), args.split)
    idx = _subset(len(sp), args.images, args.seed)
    arr = decoded(sp, net.meta.input_size, indices=idx, progress=False)
    return [sp.files[i] for i in idx], arr, normalise(arr, net.meta.mean, net.meta.std)


def _sanity(args) -> int:
    import torch

    from .. import load
    from .._util import atomic_write
    from ..analyses.report import write_report

    if args.batch < 1:
        raise ValueError(f"--batch: expected a positive integer, got {args.batch}")
    start = time.perf_counter()
    say = (lambda msg: print(msg, flush=True)) if args.progress else (lambda msg: None)
    net = load(args.model, device="cpu")
    for layer in args.layers:
        net.check_layer(layer)
    files, arr, x_all = _load_images(net, args)
    per, rows, examples = {}, [], {}
    for layer in args.layers:
        for mode in args.modes:
            records, example = _run_layer(net, x_all, layer, mode, args, say)
            per.setdefault(layer, {})[mode] = records
            rows += summary_rows(records, layer, mode, args.methods)
            if mode == args.modes[0]:
                examples[layer] = example
    wall = round(time.perf_counter() - start, 1)
    data = {"options": plain_args(args), "torch_threads": torch.get_num_threads(), "wall_s": wall,
            "unit_rule": "the layer's strongest unit for each image (largest maximum over positions; fc: largest value)",
            "figure_images": {L: files[e[0]] for L, e in examples.items()},
            "per_image": "sanity_images.json: layer -> mode -> per image {unit, position, box, steps, "
                         "method -> {spearman, ssim, edge_spearman, seed_value} per step}", "rows": rows}
    head = (f"Sanity checks of `{args.model}` ({len(files)} {args.split} images, seed {args.seed}; "
            f"wall time {wall} s)")
    paths = write_report(args.out, "sanity", figure(examples, rows, arr, args.methods), data,
                         table(rows, head), dpi=80)
    body = json.dumps({"images": files, "per_image": per}, separators=(",", ":")).encode()
    paths["images"] = atomic_write(Path(args.out) / "sanity_images.json", lambda f: f.write(body))
    print(json.dumps({k: str(v) for k, v in paths.items()} | {"wall_s": wall}))
    return 0


SANITY = Command("parameter-randomisation sanity checks of projections (Adebayo et al. 2018)", _options, _sanity)
