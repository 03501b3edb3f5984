"""Feature invariance (Zeiler & Fergus 2013, Sec. 4.3 and Fig. 5).

Fig. 5 of the paper: five images are translated vertically, rescaled and
rotated, and for each transformation amount the paper plots "the Euclidean
distance between feature vectors from the original and transformed images in
layers 1 and 7" and "the probability of the true label for each image, as the
image is transformed". Small transformations change layer 1 a lot and the
top layers much less; the output is stable to translation and scaling, not to
rotation (except for rotation-symmetric objects).

``invariance(net, images, targets, kind, amounts)`` computes those curves for
any layers (default conv1, conv5, fc7: layers 1, 5 and 7 of the paper), one
curve per image.

Assumptions, stated once:

* Transformations act on the model's normalised input view (after resize and
  centre crop), about the centre of the image; pixels that come from outside
  the image are 0, i.e. the data set's mean colour ("grey"), as for occlusion.
* ``translation``: vertical shift in input pixels, positive moves the content
  down (integer shifts are exact copies); ``scale``: zoom factor about the
  centre (> 1 enlarges, so the border is cropped); ``rotation``: degrees,
  counter-clockwise as displayed (y axis pointing down). Non-integer shifts,
  scales and rotations are resampled bilinearly (``grid_sample``); amount 0
  (or scale 1) returns the input itself.
* A feature vector is a layer's whole activation (all units, all positions)
  flattened; the distance is the plain L2 norm of the difference, as in the
  paper (not normalised, so layers are compared by the shape of their
  curves, not their height).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .report import write_report

KINDS = ("translation", "scale", "rotation")

# The ranges of Fig. 5: vertical translation -60..60 px, scale 1..1.8, rotation 0..350 degrees.
DEFAULT_AMOUNTS = {
    "translation": [float(v) for v in range(-60, 61, 10)],
    "scale": [round(1.0 + 0.1 * i, 2) for i in range(9)],
    "rotation": [float(v) for v in range(0, 360, 15)] + [360.0],
}
DEFAULT_LAYERS = ("conv1", "conv5", "fc7")
IDENTITY = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")


def _shift_rows(x: torch.Tensor, dy: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    H = x.shape[-2]
    if abs(dy) >= H:
        return out
    if dy >= 0:
        out[..., dy:, :] = x[..., :H - dy, :]
    else:
        out[..., :H + dy, :] = x[..., -dy:, :]
    return out


def transform(x: torch.Tensor, kind: str, amount: float) -> torch.Tensor:
    """``x`` (N, C, H, W), normalised, transformed by ``kind`` with ``amount`` (see the module docstring)."""
    _check_kind(kind)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a float tensor of shape (N, C, H, W), got {got}")
    amount = float(amount)
    if not math.isfinite(amount):
        raise ValueError(f"amount: expected a finite number, got {amount}")
    if kind == "scale" and amount <= 0:
        raise ValueError(f"scale: expected a factor > 0, got {amount}")
    if amount == IDENTITY[kind]:
        return x.clone()
    if kind == "translation" and amount == round(amount):
        return _shift_rows(x, int(round(amount)))
    N, _, H, W = x.shape
    # input pixel = A (output pixel - centre) + centre - t, written in grid_sample's normalised
    # coordinates n = D (pixel - centre), D = diag(2/W, 2/H)
    if kind == "translation":
        A = torch.eye(2, dtype=torch.float64)
        t = torch.tensor([0.0, 2.0 * amount / H], dtype=torch.float64)
    elif kind == "scale":
        A = torch.eye(2, dtype=torch.float64) / amount
        t = torch.zeros(2, dtype=torch.float64)
    else:
        th = math.radians(amount)
        c, s = math.cos(th), math.sin(th)
        # an output pixel shows the input pixel rotated back: counter-clockwise on screen (y down)
        R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        D = torch.diag(torch.tensor([2.0 / W, 2.0 / H], dtype=torch.float64))
        A = D @ R @ torch.linalg.inv(D)
        t = torch.zeros(2, dtype=torch.float64)
    theta = torch.cat([A, -t.view(2, 1)], 1).to(x.dtype).to(x.device).expand(N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class InvarianceResult:
    """The curves of Fig. 5 for one transformation."""

    kind: str
    amounts: list[float]
    layers: list[str]
    distance: dict[str, np.ndarray]  # layer -> (N, A): ||phi(x) - phi(T_a x)||_2
    probability: np.ndarray  # (N, A): softmax probability of the true class of T_a x
    top_class: np.ndarray  # (N, A): the most probable class of T_a x
    targets: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "amounts": self.amounts, "layers": self.layers,
                "distance": {k: v.tolist() for k, v in self.distance.items()},
                "probability": self.probability.tolist(), "top_class": self.top_class.tolist(),
                "targets": self.targets}


@torch.no_grad()
def invariance(net, images: torch.Tensor, targets: Sequence[int], kind: str,
               amounts: Sequence[float] | None = None, layers: Sequence[str] = DEFAULT_LAYERS,
               batch_size: int = 32, progress: bool = False) -> InvarianceResult:
    """Fig. 5 for one transformation: distances at ``layers`` and the true-class probability.

    ``images``: normalised (N, 3, S, S), as ``net.preprocess`` makes them;
    ``targets``: each image's true class index among the model's outputs.
    """
    from tqdm import tqdm

    _check_kind(kind)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a normalised tensor of shape (N, 3, S, S) with N >= 1, got {got}")
    targets = [int(t) for t in targets]
    if len(targets) != len(images):
        raise ValueError(f"targets: expected one class per image ({len(images)}), got {len(targets)}")
    amounts = [float(a) for a in (DEFAULT_AMOUNTS[kind] if amounts is None else amounts)]
    if not amounts:
        raise ValueError("amounts: expected at least one amount, got none")
    layers = list(layers)
    x0 = images.to(net.device)
    base = net.forward(x0, switches=False)
    n_classes = base.logits.shape[1]
    bad = [t for t in targets if not 0 <= t < n_classes]
    if bad:
        raise ValueError(f"targets: expected class indices in 0..{n_classes - 1}, got {bad}")
    for layer in layers:
        if layer not in base.activations:
            raise KeyError(f"unknown layer: expected one of {list(base.activations)}, got {layer!r}")
    feats0 = {L: base.activations[L].flatten(1).float() for L in layers}
    N, A = len(images), len(amounts)
    dist = {L: np.zeros((N, A), dtype=np.float64) for L in layers}
    prob = np.zeros((N, A), dtype=np.float64)
    top = np.zeros((N, A), dtype=np.int64)
    tgt = torch.tensor(targets, device=net.device)
    jobs = [(i, a) for a in range(A) for i in range(0, N, batch_size)]
    for i, a in tqdm(jobs, desc=f"invariance {kind}", disable=not progress, leave=False):
        xb = transform(x0[i:i + batch_size], kind, amounts[a])
        rec = net.forward(xb, switches=False)
        for L in layers:
            d = (rec.activations[L].flatten(1).float() - feats0[L][i:i + batch_size]).norm(dim=1)
            dist[L][i:i + len(xb), a] = d.double().cpu().numpy()
        p = rec.probabilities()
        prob[i:i + len(xb), a] = p.gather(1, tgt[i:i + len(xb)].view(-1, 1)).squeeze(1).double().cpu().numpy()
        top[i:i + len(xb), a] = p.argmax(1).cpu().numpy()
    return InvarianceResult(kind, amounts, layers, dist, prob, top, targets)


# ------------------------------------------------------------------ figure and numbers

def invariance_figure(results: Sequence[InvarianceResult], names: Sequence[str], images: torch.Tensor | None = None,
                      mean=None, std=None, path: str | Path | None = None):
    """Fig. 5 as one PNG: a column per transformation; rows: example views of the first image
    (when ``images`` is given), the distance at each layer, the true-class probability; a curve per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = results[0].layers
    rows = len(layers) + 1 + (images is not None)
    ratios = ([0.55] if images is not None else []) + [1.0] * (rows - (images is not None))
    fig, axes = plt.subplots(rows, len(results), figsize=(4.2 * len(results), 2.6 * sum(ratios)), squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    xlabel = {"translation": "vertical translation (px)", "scale": "scale (ratio)", "rotation": "rotation (degrees)"}
    for c, res in enumerate(results):
        r0 = 0
        if images is not None:
            ax = axes[0, c]
            picks = np.linspace(0, len(res.amounts) - 1, 5).round().astype(int)
            views = [transform(images[:1], res.kind, res.amounts[k])[0] for k in picks]
            m = torch.tensor(mean).view(3, 1, 1)
            s = torch.tensor(std).view(3, 1, 1)
            strip = torch.cat([(v.cpu() * s + m).clamp(0, 1) for v in views], 2).permute(1, 2, 0).numpy()
            ax.imshow(strip)
            ax.set_title(f"{res.kind}: " + ", ".join(f"{res.amounts[k]:g}" for k in picks), fontsize=9)
            ax.axis("off")
            r0 = 1
        for r, L in enumerate(layers):
            ax = axes[r0 + r, c]
            for n, name in enumerate(names):
                ax.plot(res.amounts, res.distance[L][n], marker=".", label=name)
            ax.set_ylabel(f"{L}: Euclidean distance", fontsize=8)
            ax.grid(alpha=0.3)
        ax = axes[r0 + len(layers), c]
        for n, name in enumerate(names):
            ax.plot(res.amounts, res.probability[n], marker=".", label=name)
        ax.set_ylabel("P(true class)", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel[res.kind])
        ax.grid(alpha=0.3)
    axes[-1, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return fig


def write_invariance(results: Sequence[InvarianceResult], names: Sequence[str], out: str | Path,
                     images: torch.Tensor | None = None, mean=None, std=None, meta: dict | None = None) -> dict:
    """Write ``invariance.png`` (Fig. 5) and ``invariance.json`` (every curve) into ``out``."""
    numbers = {"images": list(names), **(meta or {}), "results": [r.to_dict() for r in results]}
    write_report(out, "invariance", invariance_figure(results, names, images, mean, std), numbers, dpi=90)
    return numbers


def pick_images(split, per_class: int = 1, classes: int = 5, seed: int = 0) -> list[int]:
    """``per_class`` seeded-random images from each of ``classes`` classes spread evenly over the split."""
    targets = np.asarray(split.targets)
    n_cls = len(split.class_ids)
    if not 1 <= classes <= n_cls:
        raise ValueError(f"classes: expected 1..{n_cls}, got {classes}")
    rng = np.random.default_rng(seed)
    out = []
    for c in np.linspace(0, n_cls - 1, classes).round().astype(int):
        idx = np.flatnonzero(targets == c)
        out.extend(sorted(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist()))
    return out
