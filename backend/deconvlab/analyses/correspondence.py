"""Correspondence analysis (Zeiler & Fergus 2013, Sec. 4.3, Table 1 and Fig. 8).

The paper asks whether the model implicitly computes a correspondence between
the same object part in different images. It takes 5 images of dogs with
frontal pose, masks out the same part in each (left eye, right eye, nose) and
measures, at layer l, the feature difference of each image

    eps_i^l = x_i^l - x~_i^l     (original minus occluded features)

and how consistent that difference is across images:

    Delta_l = sum over pairs (i, j) of H(sign(eps_i^l), sign(eps_j^l))

with H the Hamming distance. A lower Delta than for masks at random positions
means occluding the part changes the representation in the same way in every
image. Table 1 reports Delta for layers 5 and 7 against random parts.

``correspondence(net, images, part_boxes)`` does this for any parts and
layers. The boxes come from the caller (a JSON file on the CLI, the request
body in the API); ``models/analyses/correspondence_boxes.json`` holds an
example for English springers of Imagenette.

Assumptions, stated once:

* Pairs are unordered (i < j); the paper's sum over i != j is exactly twice
  as large, which changes no comparison.
* sign takes three values (-1, 0, +1): a unit the mask does not change has
  eps = 0, and two images agree there when both are 0. ``delta`` is the raw
  sum of Hamming distances; ``delta_normalised`` divides it by (number of
  pairs x feature length), the mean fraction of differing signs, which is
  the scale of the numbers in Table 1 (0.07 to 0.4).
* The mask is a box filled with 0 in the normalised input, i.e. the data
  set's mean colour (the paper's grey squares). Boxes are ``(top, left,
  bottom, right)`` in input pixels of the model's view (after resize and
  centre crop), bottom/right exclusive; ``box_to_view`` maps boxes drawn on
  the stored image to that view.
* Random parts: for each part, each image gets a box of the same size as
  its part box at a uniformly random position inside the image, drawn again
  for each of ``random_trials`` trials (seeded); Table 1's "random" row is
  their mean and standard deviation, here one per part (same sizes).
* With a 3-valued sign, Delta also depends on how many features a mask
  changes at all (two unchanged features agree): ``changed`` reports that
  fraction beside each Delta, so a part and its random boxes can be read
  together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .report import write_report

DEFAULT_LAYERS = ("conv5", "fc7")


def default_box_file() -> Path:
    """The example box file among the shipped models (``models/analyses/correspondence_boxes.json`` of
    a checkout; a wheel carries only the default model, so there it names a file that is not there)."""
    from .._resources import shipped_models_dir

    return (shipped_models_dir() or Path("models")) / "analyses" / "correspondence_boxes.json"


# ------------------------------------------------------------------ Hamming sums

def pairwise_hamming_sum(signs: np.ndarray | torch.Tensor) -> int:
    """Sum over pairs i < j of the Hamming distance between rows ``signs[i]`` and ``signs[j]``.

    ``signs`` is (N, D) with entries in any small set of values (here -1, 0,
    1). Per column, the pairs that differ are all pairs less the pairs that
    agree, ``C(N, 2) - sum_v C(n_v, 2)``, so the cost is O(N D), not O(N^2 D).
    """
    s = torch.as_tensor(np.asarray(signs) if not isinstance(signs, torch.Tensor) else signs)
    if s.dim() != 2:
        raise ValueError(f"signs: expected a 2-D array (images x features), got shape {tuple(s.shape)}")
    n = s.shape[0]
    total = n * (n - 1) // 2 * s.shape[1]
    agree = 0
    for v in torch.unique(s):
        c = (s == v).sum(0).long()
        agree += int((c * (c - 1) // 2).sum())
    return int(total - agree)


def sign_differences(eps: torch.Tensor) -> torch.Tensor:
    """sign(eps) as int8 in {-1, 0, 1}, (N, D) for eps (N, ...)."""
    return torch.sign(eps.flatten(1)).to(torch.int8)


# ------------------------------------------------------------------ boxes

def check_box(box: Sequence[int], size: tuple[int, int], what: str = "box") -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` as ints, non-empty and inside an image of ``size`` (H, W)."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"{what}: expected [top, left, bottom, right], got {box!r}")
    try:
        t, l, b, r = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected four integers [top, left, bottom, right], got {box!r}") from None
    H, W = size
    if not (0 <= t < b <= H and 0 <= l < r <= W):
        raise ValueError(f"{what}: expected 0 <= top < bottom <= {H} and 0 <= left < right <= {W}, got {list(box)}")
    return t, l, b, r


def box_to_view(box: Sequence[float], image_size: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """Map a box on a stored image of ``image_size`` (W, H) to the model's view: the shorter side
    resized to ``size``, then the centre ``size`` x ``size`` crop (``data.resize_crop``); clipped."""
    w, h = image_size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    left, top = (nw - size) // 2, (nh - size) // 2
    t, l, b, r = box
    sy, sx = nh / h, nw / w
    out = [round(t * sy) - top, round(l * sx) - left, round(b * sy) - top, round(r * sx) - left]
    return tuple(int(min(max(v, 0), size)) for v in out)


def occlude(x: torch.Tensor, boxes: Sequence[Sequence[int]], fill: float = 0.0) -> torch.Tensor:
    """A copy of ``x`` (N, C, H, W) with box ``boxes[i]`` of image i set to ``fill``."""
    if len(boxes) != len(x):
        raise ValueError(f"boxes: expected one box per image ({len(x)}), got {len(boxes)}")
    out = x.clone()
    for i, box in enumerate(boxes):
        t, l, b, r = check_box(box, tuple(x.shape[-2:]), f"box of image {i}")
        out[i, :, t:b, l:r] = fill
    return out


def random_boxes(sizes: Sequence[tuple[int, int]], image_size: tuple[int, int], rng: np.random.Generator
                 ) -> list[tuple[int, int, int, int]]:
    """One box per (height, width) in ``sizes`` at a uniformly random position inside ``image_size``."""
    H, W = image_size
    out = []
    for h, w in sizes:
        t = int(rng.integers(0, H - h + 1))
        l = int(rng.integers(0, W - w + 1))
        out.append((t, l, t + h, l + w))
    return out


# ------------------------------------------------------------------ Delta

@torch.no_grad()
def feature_differences(net, images: torch.Tensor, boxes: Sequence[Sequence[int]], layers: Sequence[str],
                        base=None) -> dict[str, torch.Tensor]:
    """eps_i^l = x_i^l - x~_i^l for every layer: (N, D) per layer (features flattened)."""
    base = base if base is not None else net.forward(images.to(net.device), switches=False)
    occ = net.forward(occlude(images, boxes).to(net.device), switches=False)
    return {L: (base.activations[L] - occ.activations[L]).flatten(1).float() for L in layers}


def delta(eps: torch.Tensor) -> dict:
    """Delta of Table 1 for one layer's differences (N, D): raw and normalised; ``changed``, the
    fraction of features the mask changes at all (eps != 0), averaged over the images; and
    ``delta_among_changed``, Delta divided by the pair-features where at least one of the two
    images changed (not in the paper: the sign disagreement among the features that moved)."""
    n, d = eps.shape
    signs = sign_differences(eps)
    raw = pairwise_hamming_sum(signs)
    pairs = n * (n - 1) // 2
    zeros = (signs == 0).sum(0).long()
    union = pairs * d - int((zeros * (zeros - 1) // 2).sum())  # pair-features where either image changed
    return {"delta": raw, "delta_normalised": raw / max(pairs * d, 1), "pairs": pairs, "features": d,
            "changed": float((signs != 0).double().mean()), "delta_among_changed": raw / max(union, 1)}


@torch.no_grad()
def correspondence(net, images: torch.Tensor, part_boxes: Mapping[str, Sequence[Sequence[int]]],
                   layers: Sequence[str] = DEFAULT_LAYERS, random_trials: int = 10, seed: int = 0,
                   progress: bool = False) -> dict:
    """Table 1: Delta per part and layer, against random boxes of the same sizes.

    ``images``: normalised (N, 3, S, S), N >= 2 images of one class;
    ``part_boxes``: part name -> one box per image (model-view pixels).
    For each part, ``random_trials`` times, every image gets a box of the
    size of its part box at a random position; ``parts[p]["random"][layer]``
    holds their Delta's mean, standard deviation and every trial.
    """
    from tqdm import tqdm

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a normalised tensor (N, 3, S, S), got {got}")
    n = len(images)
    if n < 2:
        raise ValueError(f"images: expected at least 2 images (Delta sums over pairs), got {n}")
    if not part_boxes:
        raise ValueError("part_boxes: expected at least one part with a box per image, got none")
    if random_trials < 0:
        raise ValueError(f"random_trials: expected 0 or more, got {random_trials}")
    size = tuple(images.shape[-2:])
    parts = {}
    for name, boxes in part_boxes.items():
        if len(boxes) != n:
            raise ValueError(f"part {name!r}: expected one box per image ({n}), got {len(boxes)}")
        parts[name] = [check_box(b, size, f"part {name!r}, image {i}") for i, b in enumerate(boxes)]
    base = net.forward(images.to(net.device), switches=False)
    for L in layers:
        if L not in base.activations:
            raise KeyError(f"unknown layer: expected one of {list(base.activations)}, got {L!r}")
    out: dict = {"layers": list(layers), "images": n, "random_trials": random_trials, "seed": seed, "parts": {}}
    jobs = [(p, t) for p in parts for t in range(-1, random_trials)]  # t = -1: the part itself
    rng = np.random.default_rng(seed)
    trials: dict[str, dict[str, list[dict]]] = {p: {L: [] for L in layers} for p in parts}
    for p, t in tqdm(jobs, desc="correspondence", disable=not progress, leave=False):
        sizes = [(b - t_, r - l) for t_, l, b, r in parts[p]]
        boxes = parts[p] if t < 0 else random_boxes(sizes, size, rng)
        eps = feature_differences(net, images, boxes, layers, base)
        res = {L: delta(eps[L]) for L in layers}
        if t < 0:
            out["parts"][p] = {"boxes": [list(b) for b in boxes], **res, "random": {}}
        else:
            for L in layers:
                trials[p][L].append({**res[L], "boxes": [list(b) for b in boxes]})
    for p in parts:
        for L in layers if random_trials else []:
            raw = np.array([t["delta"] for t in trials[p][L]], dtype=np.float64)
            nrm = np.array([t["delta_normalised"] for t in trials[p][L]], dtype=np.float64)
            chg = np.array([t["changed"] for t in trials[p][L]], dtype=np.float64)
            amc = np.array([t["delta_among_changed"] for t in trials[p][L]], dtype=np.float64)
            out["parts"][p]["random"][L] = {
                "delta_mean": float(raw.mean()), "delta_std": float(raw.std()),
                "delta_normalised_mean": float(nrm.mean()), "delta_normalised_std": float(nrm.std()),
                "changed_mean": float(chg.mean()), "delta_among_changed_mean": float(amc.mean()),
                "delta_among_changed_std": float(amc.std()), "trials": trials[p][L]}
    return out


# ------------------------------------------------------------------ box files

def read_box_file(path: str | Path) -> dict:
    """A box file: ``{"split": "val", "class_id": "...", "coordinates": "image"|"view",
    "parts": [...], "images": [{"file": "<path relative to the data root>", "boxes": {part: [t, l, b, r]}}]}``.

    Every image must give a box for every listed part. Returns the parsed dict.
    """
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"box file {path}: expected a readable JSON file, got {e}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("images"), list) or len(spec["images"]) < 2:
        raise ValueError(f"box file {path}: expected an object with an \"images\" list of at least 2 entries")
    parts = spec.get("parts") or sorted(spec["images"][0].get("boxes", {}))
    for i, im in enumerate(spec["images"]):
        if not isinstance(im, dict) or "file" not in im or not isinstance(im.get("boxes"), dict):
            raise ValueError(f"box file {path}: image {i}: expected {{\"file\": ..., \"boxes\": {{part: box}}}}, "
                             f"got {im!r}")
        missing = [p for p in parts if p not in im["boxes"]]
        if missing:
            raise ValueError(f"box file {path}: image {i} ({im['file']}): expected boxes for {parts}, "
                             f"missing {missing}")
    if spec.get("coordinates", "image") not in ("image", "view"):
        raise ValueError(f"box file {path}: coordinates: expected 'image' or 'view', "
                         f"got {spec.get('coordinates')!r}")
    spec["parts"] = list(parts)
    return spec


def load_box_images(spec: dict, data_root: str | Path, size: int, mean, std
                    ) -> tuple[torch.Tensor, dict[str, list[tuple[int, int, int, int]]], list]:
    """The images of a box file as a normalised batch at the model's view, and the boxes in that view."""
    from ..data import load_rgb, resize_crop
    from .evolution import normalise

    root = Path(data_root)
    arrays, parts = [], {p: [] for p in spec["parts"]}
    views = []
    for i, im in enumerate(spec["images"]):
        f = (root / im["file"]).resolve()
        if root.resolve() not in f.parents:
            raise ValueError(f"image {i}: expected a path inside the data root {root}, got {im['file']!r}")
        if not f.is_file():
            raise FileNotFoundError(f"image {i}: {f} does not exist")
        rgb = load_rgb(f)
        view = resize_crop(rgb, size)
        views.append(view)
        arrays.append(np.asarray(view, dtype=np.uint8))
        for p in spec["parts"]:
            box = im["boxes"][p]
            if spec.get("coordinates", "image") == "image":
                check_box(box, (rgb.height, rgb.width), f"image {i} part {p!r}")
                box = box_to_view(box, rgb.size, size)
            parts[p].append(check_box(box, (size, size), f"image {i} part {p!r} (model view)"))
    return normalise(np.stack(arrays), mean, std), parts, views


# ------------------------------------------------------------------ figure and numbers

PART_COLOURS = [(230, 40, 40), (40, 200, 60), (250, 210, 0), (60, 120, 255), (230, 60, 230)]


def correspondence_figure(views: Sequence, parts: Mapping[str, Sequence[Sequence[int]]], result: dict,
                          cell: int = 112):
    """Fig. 8: each image with its part boxes; Table 1 underneath (normalised Delta of each part
    against random boxes of the same sizes, mean +- std over the trials)."""
    from PIL import Image, ImageDraw

    n = len(views)
    names = list(parts)
    layers = result["layers"]
    col = 190
    table_h = 18 * (len(names) + 2) + 8
    sheet = Image.new("RGB", (max(n * (cell + 4) + 4, 130 + col * 2 * len(layers)), cell + 8 + table_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, v in enumerate(views):
        im = v.convert("RGB").copy()
        d = ImageDraw.Draw(im)
        for k, p in enumerate(names):
            t, l, b, r = parts[p][i]
            d.rectangle([l, t, r - 1, b - 1], outline=PART_COLOURS[k % len(PART_COLOURS)], width=2)
        sheet.paste(im.resize((cell, cell), Image.BILINEAR), (4 + i * (cell + 4), 4))
    y = cell + 12
    draw.text((4, y), "Delta (among changed)", fill="black")
    for j, L in enumerate(layers):
        draw.text((130 + 2 * col * j, y), f"{L}: part", fill="black")
        draw.text((130 + 2 * col * j + col, y), f"{L}: random, same size", fill="black")
    for k, p in enumerate(names):
        y += 18
        draw.text((4, y), p, fill=PART_COLOURS[k % len(PART_COLOURS)])
        res = result["parts"][p]
        for j, L in enumerate(layers):
            draw.text((130 + 2 * col * j, y), f"{res[L]['delta_normalised']:.4f} ({res[L]['delta_among_changed']:.3f})",
                      fill="black")
            r = res["random"].get(L)
            if r:
                draw.text((130 + 2 * col * j + col, y), f"{r['delta_normalised_mean']:.4f} +- "
                          f"{r['delta_normalised_std']:.4f} ({r['delta_among_changed_mean']:.3f})", fill="black")
    return sheet


def write_correspondence(result: dict, views: Sequence, parts: Mapping, out: str | Path,
                         meta: dict | None = None) -> dict:
    """Write ``correspondence.png`` (Fig. 8 with Table 1) and ``correspondence.json`` into ``out``."""
    numbers = {**(meta or {}), **result}
    write_report(out, "correspondence", correspondence_figure(views, parts, result), numbers)
    return numbers
