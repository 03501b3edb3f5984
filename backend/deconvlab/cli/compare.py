"""``deconvlab compare`` and ``deconvlab region`` (issue 16): two networks side by side; units from a box.

===========  =====================================================================  ========================
subcommand   writes                                                                 library
===========  =====================================================================  ========================
``compare``  ``compare.png`` (the layer-by-layer linear CKA heat map) and            ``analyses.compare``
             ``compare.json`` (that matrix and the matched-unit table: per unit,
             its best match, the Hungarian partner and their correlations)
``region``   ``region.png`` (the input with the box, the ranked units' projections  ``analyses.region``
             cropped to their receptive fields) and ``region.json`` (the ranking)
===========  =====================================================================  ========================

``compare`` takes two registered models (or checkpoints), two training snapshots of one
(``--epoch``, ``--other-epoch``), or a model and itself (``--other`` left out). The images are
a fixed sample of ``--n`` images of the split (``evolution.subset_indices``: seeded, sorted).
Every matrix is cached on disk (``--cache``, default ``<cache dir>/compare``) as
``<key>.npz``, the key the sha256 of both models' weights, the images (listing and indices), the
layers and the rule (``analyses.compare.compare_key``), so a second run with the same inputs
only reads them. The work shows a progress bar per matrix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import Command, data_path


# ---------------------------------------------------------------- compare

def _compare_options(p) -> None:
    from ..analyses.compare import BYS, DEFAULT_GRID

    p.add_argument("--model", default="zfnet-imagenette", help="registry name or checkpoint path")
    p.add_argument("--epoch", type=int, default=None, help="use this training snapshot of --model")
    p.add_argument("--other", default=None, help="the second model (default: --model itself)")
    p.add_argument("--other-epoch", type=int, default=None, help="use this training snapshot of --other")
    p.add_argument("--data", default="", help="ImageFolder root (default: DECONVLAB_DATA / Imagenette)")
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=200, help="images of the split (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image sample")
    p.add_argument("--layers", nargs="*", default=[], help="CKA rows (default: the model's main layers)")
    p.add_argument("--other-layers", nargs="*", default=[], help="CKA columns (default: the other's main layers)")
    p.add_argument("--match", nargs="*", default=None, metavar="LAYER[:OTHER_LAYER]",
                   help="layer pairs of the matched-unit table (default: the CKA layers both models have)")
    p.add_argument("--by", choices=list(BYS), default="auto", help="correlate per position, spatial maxima, or auto")
    p.add_argument("--grid", type=int, default=DEFAULT_GRID, help="CKA: pool maps to at most this many cells a "
                   "side (0: the whole map)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cache", default="", help="folder of cached matrices (default: <cache dir>/compare)")
    p.add_argument("--out", default="runs/compare", help="folder for compare.png and compare.json")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def load_net(name: str, epoch: int | None):
    """A registered model or checkpoint, or (``epoch``) that training snapshot of it, on the CPU."""
    from .. import load

    if epoch is None:
        return load(name, device="cpu")
    from ..analyses.evolution import snapshot_paths
    from ..net import Net
    from ..nets import load_checkpoint

    paths = dict(snapshot_paths(name))
    if epoch not in paths:
        raise ValueError(f"epoch: expected one of {sorted(paths)} (the snapshots of {name}), got {epoch}")
    module, meta = load_checkpoint(paths[epoch])
    return Net(module, meta, device="cpu")


def _cached(folder: Path, key: str, compute) -> dict:
    """The arrays stored under ``key`` in ``folder``, else ``compute()``'s, stored."""
    import numpy as np

    from .._util import atomic_npz

    path = folder / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = compute()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_npz(path, arrays)
    return arrays


def _bar(progress: bool, n: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress)
    return bar, (lambda done, total: bar.update(done - bar.n))


def _pairs(specs, la: list[str], net_b) -> list[tuple[str, str]]:
    if specs is None:
        out = []
        for layer in la:
            try:
                out.append((net_b.check_layer(layer), layer))
            except KeyError:
                continue
        return out
    pairs = []
    for s in specs:
        a, _, b = str(s).partition(":")
        if not a:
            raise ValueError(f"--match: expected LAYER or LAYER:OTHER_LAYER such as conv5:layer4.1, got {s!r}")
        pairs.append((a, b or a))
    return pairs


def _match_table(net_a, net_b, images, pairs, args, folder: Path) -> list[dict]:
    import numpy as np

    from ..analyses import compare

    out = []
    for la, lb in pairs:
        by = compare.resolve_by(net_a, la, net_b, lb, args.by)
        key = compare.compare_key(net_a, net_b, images, "matches", la, lb, by)
        bar, tick = _bar(args.progress, len(images), f"match {la}:{lb}")

        def compute():
            r, _ = compare.correlations(net_a, la, net_b, lb, images, by, args.batch_size, tick)
            return {"r": r}

        r = _cached(folder, key, compute)["r"]
        bar.close()
        best, corr = compare.best_matches(r)
        one, one_corr = compare.best_matches(r, one_to_one=True)

        def num(v):
            return None if np.isnan(v) else round(float(v), 6)

        out.append({"layer": la, "other_layer": lb, "by": by, "units_with_a_match": int((best >= 0).sum()),
                    "mean_best_correlation": num(np.nanmean(corr)) if (best >= 0).any() else None,
                    "mean_one_to_one_correlation": num(np.nanmean(one_corr)) if (one >= 0).any() else None,
                    "units": [{"unit": u, "best": int(best[u]) if best[u] >= 0 else None, "correlation": num(corr[u]),
                               "one_to_one": int(one[u]) if one[u] >= 0 else None,
                               "one_to_one_correlation": num(one_corr[u])} for u in range(len(best))]})
    return out


def _compare(args) -> int:
    import numpy as np

    from ..analyses import compare
    from ..analyses.evolution import subset_indices
    from ..analyses.report import write_report
    from ..data import cache_dir, list_split

    if args.grid < 0:
        raise ValueError(f"--grid: expected 0 (the whole map) or a positive number of cells, got {args.grid}")
    other = args.other or args.model
    net_a = load_net(args.model, args.epoch)
    net_b = net_a if (other == args.model and args.other_epoch == args.epoch) else load_net(other, args.other_epoch)
    root = data_path(args)
    split = list_split(root, args.split)
    images = compare.DatasetImages(split, subset_indices(len(split), args.n, args.seed))
    folder = Path(args.cache) if args.cache else cache_dir() / "compare"
    grid = args.grid or None
    la = args.layers or compare.default_layers(net_a)
    lb = args.other_layers or compare.default_layers(net_b)
    key = compare.compare_key(net_a, net_b, images, "cka", tuple(la), tuple(lb), grid)
    bar, tick = _bar(args.progress, len(images), "cka")
    m = _cached(folder, key, lambda: {"cka": compare.cka(net_a, net_b, images, la, lb, grid, args.batch_size,
                                                         tick).matrix})["cka"]
    bar.close()
    result = compare.CKA(la, lb, m, grid, len(images))
    table = _match_table(net_a, net_b, images, _pairs(args.match, la, net_b), args, folder)
    name_a = args.model + ("" if args.epoch is None else f" (epoch {args.epoch})")
    name_b = other + ("" if args.other_epoch is None else f" (epoch {args.other_epoch})")
    numbers = {"model": name_a, "other": name_b, "data": root, "split": args.split, "n": len(images),
               "seed": args.seed, "cka": result.to_dict(), "matches": table}
    write_report(args.out, "compare", compare.cka_figure(result, name_a, name_b), numbers)
    diag = [float(m[i, lb.index(L)]) for i, L in enumerate(la) if L in lb]
    print(json.dumps({"figure": str(Path(args.out) / "compare.png"), "numbers": str(Path(args.out) / "compare.json"),
                      "cka_same_layer": [round(v, 4) for v in diag if not np.isnan(v)],
                      "mean_best_correlation": {f"{t['layer']}:{t['other_layer']}": t["mean_best_correlation"]
                                                for t in table}}))
    return 0


COMPARE = Command("two models (or snapshots) side by side: CKA heat map and matched units (PNG + JSON)",
                  _compare_options, _compare)


# ---------------------------------------------------------------- region

def _region_options(p) -> None:
    p.add_argument("--model", default="zfnet-imagenette", help="registry name or checkpoint path")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--box", type=int, nargs=4, required=True, metavar=("TOP", "LEFT", "BOTTOM", "RIGHT"),
                   help="input pixels of the model's view (after resize and centre crop), bottom/right exclusive")
    p.add_argument("--k", type=int, default=None, help="units to list (default 20, or all when fewer)")
    p.add_argument("--out", default="runs/region", help="folder for region.png and region.json")


def _region(args) -> int:
    from .. import load
    from ..analyses.region import rank_units
    from ..analyses.report import write_report
    from ..data import load_rgb

    net = load(args.model, device="cpu")
    image = load_rgb(args.image)
    rec = net.forward(net.preprocess(image))
    r = rank_units(net, rec, args.layer, args.box, args.k)
    numbers = {"model": args.model, "image": str(args.image), **r.to_dict()}
    write_report(args.out, "region", region_sheet(net, rec, image, r), numbers)
    print(json.dumps({"figure": str(Path(args.out) / "region.png"), "layer": r.layer, "overlap": r.overlap,
                      "units": [u.unit for u in r.units]}))
    return 0


def region_sheet(net, rec, image, r, cell: int = 64):
    """The input view with the box drawn (red) beside the ranked units' projections, each cropped to its field."""
    from PIL import Image, ImageDraw

    from ..data import resize_crop
    from ..render import projection_image

    view = resize_crop(image.convert("RGB"), int(net.meta.input_size))
    ImageDraw.Draw(view).rectangle((r.box[1], r.box[0], r.box[3] - 1, r.box[2] - 1), outline=(255, 0, 0), width=2)
    items = [(r.layer, u.unit, u.position) for u in r.units]
    projections = net.project_many(rec, items).detach().float().cpu().numpy()
    cols = 5
    rows = -(-len(items) // cols)
    sheet = Image.new("RGB", (view.width + 8 + cols * (cell + 4), max(view.height, rows * (cell + 14))), "white")
    sheet.paste(view, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, (u, p) in enumerate(zip(r.units, projections)):
        t, l, b, rr = u.box
        tile = projection_image(p).crop((l, t, rr, b)).resize((cell, cell))
        x, y = view.width + 8 + (i % cols) * (cell + 4), (i // cols) * (cell + 14)
        sheet.paste(tile, (x, y))
        draw.text((x, y + cell), f"{u.unit}: {u.value:.3g}", fill="black")
    return sheet


REGION = Command("rank a layer's units by their strongest activation inside a box of the input (PNG + JSON)",
                 _region_options, _region)
