"""``deconvlab faithfulness``: deletion and insertion curves of the projections (RISE, with ROAD's fill).

    deconvlab faithfulness --model zfnet-imagenette --images 100 --layers conv2 conv5 fc8 --out DIR

``--images`` val images are drawn with ``--seed`` (a sorted random choice of
the split); each is read as ``Net.preprocess`` reads an upload. The library is
``analyses.faithfulness`` (its docstring says what a unit, a step, a fill and
an AUC are); this module writes what it returns:

=====================  =====================================================================
file                   what
=====================  =====================================================================
``faithfulness.json``  the options, the command and its wall time, the image files, every
                       image's units and AUCs, the mean curves, the summary
``faithfulness.md``    per fill, layer and order: mean AUC and its 95% bootstrap interval
``faithfulness.png``   mean curves: a row per layer, deletion and insertion of each fill
=====================  =====================================================================
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .options import Command, data_path, plain_args, source_args


def _options(p) -> None:
    from ..analyses.faithfulness import BASELINES, FILLS, METHODS, REGIONS, STARTS

    source_args(p)
    p.add_argument("--images", type=int, default=100, help="val images, a seeded random choice")
    p.add_argument("--layers", nargs="*", default=[], help="default: conv2 conv5 fc8 (the paper nets), "
                   "else the last layer with a map and the logits")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    p.add_argument("--fills", nargs="*", default=list(FILLS), choices=list(FILLS))
    p.add_argument("--constant-images", type=int, default=0,
                   help="run the constant fill on the first N of the images only (0: all)")
    p.add_argument("--steps", type=int, default=16, help="steps per curve")
    p.add_argument("--cell", type=int, default=4, help="side of the squares ranked and removed, in pixels")
    p.add_argument("--region", default="rf", choices=list(REGIONS),
                   help="rf: the unit's receptive field; image: every pixel")
    p.add_argument("--start", default="blur", choices=list(STARTS), help="insertion start of the constant fill")
    p.add_argument("--noise", type=float, default=0.01, help="ROAD's noise (std, normalised input units)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="runs/faithfulness", help="folder for the table, the figure and the JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def pick_images(n_files: int, n: int, seed: int):
    """``n`` sorted indices of ``n_files`` (all when ``n`` is 0 or too many), a seeded choice."""
    import numpy as np

    if n < 0:
        raise ValueError(f"--images: expected a number >= 0, got {n}")
    if not n or n >= n_files:
        return np.arange(n_files)
    return np.sort(np.random.default_rng(seed).choice(n_files, size=n, replace=False))


def _command(args) -> str:
    words = ["deconvlab", "faithfulness"]
    for k, v in plain_args(args).items():
        if k in ("command", "progress") or v in ("", [], None):
            continue
        flag = "--" + k.replace("_", "-")
        words += [flag, *map(str, v)] if isinstance(v, list) else [flag, str(v)]
    return " ".join(words)


def _run(args) -> int:
    import torch

    from .. import load
    from ..analyses.faithfulness import faithfulness
    from ..data import list_split, load_rgb

    torch.set_num_threads(1)  # predictable on shared cores (see tests/conftest.py one_torch_thread)
    net = load(args.model, device="cpu")
    root = data_path(args)
    sp = list_split(root, args.split)
    idx = pick_images(len(sp), args.images, args.seed)
    x = torch.cat([net.preprocess(load_rgb(sp.path(int(i)))) for i in idx])
    t0 = time.time()

    def progress(done, total):
        if args.progress:
            print(f"faithfulness: {done}/{total} images, {time.time() - t0:.0f} s", flush=True)

    fill_images = {"constant": args.constant_images} if args.constant_images else None
    res = faithfulness(net, x, args.layers or None, args.methods, args.baselines, args.fills, args.steps,
                       args.cell, args.region, args.noise, args.seed, args.start,
                       fill_images=fill_images, batch_size=args.batch_size, progress=progress)
    wall = round(time.time() - t0, 1)
    res["meta"] = {"model": str(args.model), "data": root, "split": args.split, "command": _command(args),
                   "wall_s": wall, "args": plain_args(args), "files": [sp.files[int(i)] for i in idx]}
    paths = write_faithfulness(res, args.out)
    print(json.dumps({"table": str(paths["table"]), "figure": str(paths["figure"]), "wall_s": wall}))
    return 0


def _ci(s: dict) -> str:
    return "--" if s["mean"] is None else f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"


def faithfulness_table(res: dict) -> str:
    """Markdown: per fill, a row per layer and order with the AUCs, their intervals and the paired
    differences to the random order."""
    cfg = res["config"]
    lines = [f"# Faithfulness: deletion and insertion AUC\n",
             f"Mean over images, 95% percentile bootstrap interval in brackets; AUC of the unit's activation "
             f"divided by its clean value; {cfg['steps']} steps, {cfg['cell']} px cells, region `{cfg['region']}`. "
             f"Deletion: lower is more faithful; insertion: higher.\n"]
    for fill, by_layer in res["summary"].items():
        start = f", insertion from `{cfg['start']}`" if fill == "constant" else ""
        lines += [f"\n## fill `{fill}`{start} ({cfg['fill_images'][fill]} images)\n",
                  "| layer | order | deletion | insertion | insertion - deletion | deletion - random "
                  "| insertion - random | n |", "|---|---|---|---|---|---|---|---|"]
        for L, by_name in by_layer.items():
            for name, s in by_name.items():
                dr, ir = s.get("deletion_minus_random"), s.get("insertion_minus_random")
                lines.append(f"| {L} | {name} | {_ci(s['deletion'])} | {_ci(s['insertion'])} | "
                             f"{_ci(s['insertion_minus_deletion'])} | {_ci(dr) if dr else ''} | "
                             f"{_ci(ir) if ir else ''} | {s['deletion']['n']} |")
        lines += ["", "Do deletion and insertion rank the orders alike (ROAD's consistency)? Spearman's rho "
                  "between the orders' mean deletion AUC (ascending) and mean insertion AUC (descending): "
                  + ", ".join(f"{L} {rank_agreement(by_name):+.2f}" for L, by_name in by_layer.items()) + "."]
    return "\n".join(lines) + "\n"


def rank_agreement(by_name: dict) -> float:
    """Spearman's rho between the orders' ranks by mean deletion AUC (lower first) and by mean insertion
    AUC (higher first); 1: the two curves agree on which order is most faithful, down the list."""
    from scipy.stats import spearmanr

    d = [-s["deletion"]["mean"] for s in by_name.values() if s["deletion"]["mean"] is not None]
    i = [s["insertion"]["mean"] for s in by_name.values() if s["insertion"]["mean"] is not None]
    return float(spearmanr(d, i).statistic) if len(d) == len(i) > 2 else float("nan")


def faithfulness_figure(res: dict):
    """Mean curves: a row per layer; deletion and insertion of each fill as columns; a line per order."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fills, layers = list(res["curves"]), res["config"]["layers"]
    cols = [(f, c) for f in fills for c in ("deletion", "insertion")]
    fig = Figure(figsize=(2.6 * len(cols), 2.1 * len(layers)), layout="constrained")
    axes = fig.subplots(len(layers), len(cols), squeeze=False, sharex=True)
    for r, L in enumerate(layers):
        for c, (f, curve) in enumerate(cols):
            ax = axes[r][c]
            for name, cur in res["curves"][f][L].items():
                if cur[curve]:
                    ax.plot(res["fractions"], cur[curve], label=name, lw=1.2,
                            ls="--" if name in ("random", "sobel") else "-")
            ax.set_title(f"{L}: {curve} ({f})", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(layers) - 1:
                ax.set_xlabel("fraction of cells", fontsize=7)
    axes[0][0].legend(fontsize=6)
    return fig


def write_faithfulness(res: dict, out_dir) -> dict:
    """``faithfulness.json``, ``.md`` and ``.png`` in ``out_dir`` (``analyses.report``)."""
    from ..analyses.report import write_report

    return write_report(Path(out_dir), "faithfulness", faithfulness_figure(res), res, faithfulness_table(res), dpi=80)


FAITHFULNESS = Command("deletion/insertion AUC of the projections vs random and Sobel orders (RISE, ROAD fill)",
                       _options, _run, env={"OMP_WAIT_POLICY": "PASSIVE"})
