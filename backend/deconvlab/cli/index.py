"""``deconvlab index``: the top-k data-set images of every unit (Zeiler & Fergus 2013, Fig. 2).

It runs under ``torchrun`` as well (``torchrun --nproc-per-node N -m deconvlab.cli
index ...``): each rank scans its share of the images, on its own GPU when
there are GPUs (``LOCAL_RANK`` picks one), and only rank 0 prints the summary.
"""

from __future__ import annotations

import argparse
import json

from .options import Command, data_path, source_args


def _index_options(p) -> None:
    source_args(p)
    p.add_argument("--k", type=int, default=9, help="images kept per unit")
    p.add_argument("--out", default="", help="index folder (default: under the cache dir, see default_index_path)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: up to 2)")
    p.add_argument("--checkpoint-every", type=int, default=20, help="batches between checkpoints")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def _index(args) -> int:
    import os

    import torch

    from .. import load
    from ..index import TopKIndex, build_index

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device
    if "LOCAL_RANK" in os.environ and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"  # one GPU per rank
    net = load(args.model, device=device)
    out = build_index(net, data_path(args), split=args.split, out=args.out or None, k=args.k,
                      batch_size=args.batch_size, workers=None if args.workers < 0 else args.workers,
                      checkpoint_every=args.checkpoint_every, progress=args.progress)
    if int(os.environ.get("RANK", "0")) == 0:
        m = TopKIndex.read_manifest(out)
        print(json.dumps({"index": str(out), "k": m["k"], "layers": [L["name"] for L in m["layers"]],
                          "num_images": m["data"]["num_images"], "world_size": m["build"]["world_size"],
                          "images_per_s": m["build"]["images_per_s"], "wall_s": m["build"]["wall_s"]}))
    return 0


INDEX = Command("the top-k data-set images of every unit (Fig. 2); runs under torchrun too", _index_options, _index)
