"""``deconvlab report``: one unit's page as one self-contained HTML file (issue 16, ``analyses.unit_report``).

    deconvlab report --model M --image FILE --layer L --unit U --out unit.html

The input, the three projections and the feature map are always there. The
other parts cost work, so the command does only what it is asked or finds:

=============  ==============================================================  =================================
section        where it comes from                                             absent when (the page says why)
=============  ==============================================================  =================================
top-9          the model's top-k index for ``--data``/``--split`` (``--index``  no data set, no index, or a stale
               or its default place), opened, never built                       one (``deconvlab index`` builds it)
evolution      ``--evolution-n N``: N data-set images through every training   N = 0 (the default), no data set,
               snapshot (``analyses.evolution``)                               or a model without snapshots
occlusion      ``--occlusion`` (``--occlusion-size``, ``--occlusion-stride``),  not asked for
               tracking this unit's map (Fig. 7(b) of the unit itself)
sanity         ``--sanity``: Adebayo et al.'s cascading randomisation          not asked for
=============  ==============================================================  =================================

``--data`` defaults to ``$DECONVLAB_DATA``; without either, nothing is
downloaded and the data-set parts are absent. Prints one JSON line: the file
written, its size, each section's state, the weights' and the image's sha256.
"""

from __future__ import annotations

import argparse
import json
import os

from .options import Command


def _report_options(p) -> None:
    p.add_argument("--model", default="zfnet-imagenette", help="registry name or checkpoint path")
    p.add_argument("--image", required=True, help="the picture (any format deconvlab reads)")
    p.add_argument("--layer", required=True)
    p.add_argument("--unit", type=int, required=True)
    p.add_argument("--out", default="unit.html", help="the HTML file to write")
    p.add_argument("--method", default="deconv", choices=["deconv", "guided", "backprop"],
                   help="the method the page names first (all three are shown)")
    p.add_argument("--seed", default="point", choices=["point", "map"])
    p.add_argument("--y", type=int, default=None, help="point seed row in the layer's map (default: the maximum)")
    p.add_argument("--x", type=int, default=None, help="point seed column")
    p.add_argument("--data", default="", help="ImageFolder root for the top-9 and evolution (default: "
                                              "DECONVLAB_DATA; never downloaded)")
    p.add_argument("--split", default="val")
    p.add_argument("--index", default="", help="top-k index folder (default: its place for --data/--split)")
    p.add_argument("--evolution-n", type=int, default=0,
                   help="data-set images to scan through each training snapshot (0: no evolution strip)")
    p.add_argument("--occlusion", action=argparse.BooleanOptionalAction, default=False,
                   help="run the occlusion maps (Fig. 7) for the page")
    p.add_argument("--occlusion-size", type=int, default=32)
    p.add_argument("--occlusion-stride", type=int, default=8)
    p.add_argument("--sanity", action=argparse.BooleanOptionalAction, default=False,
                   help="run the parameter-randomisation sanity check for the page")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _top(args, net, data: str, absent: dict):
    from ..index import default_index_path, open_index

    if not data:
        absent["top"] = "no data set given (--data or DECONVLAB_DATA), so no top-k index"
        return None
    path = args.index or default_index_path(net.meta.name or args.model, data, args.split)
    idx, status = open_index(path, net=net, data_root=data)
    if idx is None:
        absent["top"] = (f"the top-k index at {path} is {status} (build it with `deconvlab index --model "
                         f"{args.model} --data {data} --split {args.split}`)")
    return idx


def _evolution(args, data: str, absent: dict):
    from ..analyses.evolution import build_evolution

    if args.evolution_n < 0:
        raise ValueError(f"--evolution-n: expected 0 (none) or a number of images, got {args.evolution_n}")
    if args.evolution_n == 0:
        absent["evolution"] = "not asked for (--evolution-n N scans N data-set images through each snapshot)"
        return None
    if not data:
        absent["evolution"] = "no data set given (--data or DECONVLAB_DATA) to scan the snapshots over"
        return None
    try:
        ev = build_evolution(args.model, data, args.split, n=args.evolution_n, device=args.device_name)
    except (FileNotFoundError, KeyError) as e:
        absent["evolution"] = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        return None
    return ev.scan(progress=False)


def _report(args) -> int:
    from .. import load
    from ..analyses.unit_report import build_report
    from ..data import open_image

    net = load(args.model, device=args.device)
    args.device_name = str(net.device)
    data = args.data or os.environ.get("DECONVLAB_DATA", "")
    position = None if args.y is None and args.x is None else (args.y, args.x)
    if (args.y is None) != (args.x is None):
        raise ValueError(f"position: expected both --y and --x, or neither, got y={args.y}, x={args.x}")
    absent: dict = {}
    occ = san = None
    x = net.preprocess(open_image(args.image)) if args.occlusion or args.sanity else None
    if args.occlusion:
        from ..analyses.occlusion import occlusion

        occ = occlusion(net, x, args.occlusion_size, args.occlusion_stride, args.layer,  # this very unit
                        feature_map=args.unit)
    else:
        absent["occlusion"] = "not asked for (--occlusion runs it)"
    if args.sanity:
        from ..analyses.sanity import randomization

        san = randomization(net, x, args.layer, args.unit, args.method, position=position)
    else:
        absent["sanity"] = "not asked for (--sanity runs it)"
    report = build_report(net, args.image, args.layer, args.unit, method=args.method, seed=args.seed,
                          position=position, index=_top(args, net, data, absent),
                          evolution=_evolution(args, data, absent), occlusion=occ, sanity=san, absent=absent)
    out = report.save(args.out)
    p = report.provenance
    print(json.dumps({"out": str(out), "bytes": out.stat().st_size, "sections": p["sections"],
                      "weights_sha256": p["model"]["weights_sha256"], "image_sha256": p["image"]["sha256"]}))
    return 0


REPORT = Command("one unit's page as one self-contained HTML file (issue 16)", _report_options, _report)
