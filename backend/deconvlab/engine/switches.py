"""The forward record: activations and max-pool switches.

Zeiler & Fergus (2013), Sec. 2.1: "the max pooling operation is
non-invertible, however we can obtain an approximate inverse by recording the
locations of the maxima within each pooling region in a set of switch
variables." ``record_forward`` runs a flat ``nn.Sequential`` child by child
(without autograd) and keeps what a projection needs:

* ``activations``: the output of every paper layer (``conv1`` .. ``fc8``, read
  where ``nets.layer_map`` says: after the ReLU; the last fc as it is);
* ``switches``: for every ``MaxPool2d``, the flat index (into H_in*W_in of its
  input) of each output's maximum, as ``F.max_pool2d(return_indices=True)``
  gives it;
* ``outputs``: the outputs of ReLUs (their positive part is the mask of guided
  backprop and of the plain gradient) and of max pools (seeds may start there);
* ``inputs``: the inputs of normalisation layers (only ``method="backprop"``
  needs them, for their exact gradient);
* ``in_shapes``: every child's input shape.

Everything here is a reference to a tensor the forward pass made anyway; the
switches are the only extra memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

NORMS = (nn.LocalResponseNorm, nn.BatchNorm2d)


@dataclass
class Record:
    """What one forward pass leaves behind for projections (a batch of N inputs)."""

    input: torch.Tensor  # (N, C, H, W), the preprocessed input
    logits: torch.Tensor  # (N, classes): the last child's output
    activations: dict[str, torch.Tensor]  # paper layer -> (N, C, H, W) or (N, C)
    switches: dict[str, torch.Tensor] = field(default_factory=dict)  # pool child -> (N, C, Ho, Wo) int64
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # ReLU / max-pool child -> its output
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # normalisation child -> its input
    in_shapes: dict[str, tuple] = field(default_factory=dict)  # child -> input shape without N
    has_switches: bool = True
    _yx: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def switch_yx(self, name: str) -> torch.Tensor:
        """Each switch of pool ``name`` as (row, column) of the pool's input, int32
        (N, C, H_out * W_out, 2), computed once (the projections' unpooling reads it)."""
        if name not in self._yx:
            sw = self.switches[name]
            hin, win = self.in_shapes[name][-2:]
            if sw.numel() and (int(sw.min()) < 0 or int(sw.max()) >= hin * win):
                raise ValueError(f"{name}: expected every max-pool window to overlap its {hin}x{win} input, got "
                                 f"one wholly in padding (switch index outside the map)")
            yx = torch.stack([torch.div(sw, win, rounding_mode="floor"), sw % win], -1)
            self._yx[name] = yx.to(torch.int32).reshape(sw.shape[0], sw.shape[1], -1, 2).contiguous()
        return self._yx[name]

    def __len__(self) -> int:
        return int(self.input.shape[0])

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.input.shape[-2]), int(self.input.shape[-1])

    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits, (N, classes)."""
        return torch.softmax(self.logits.float(), dim=1)

    def select(self, index: int | list[int]) -> "Record":
        """The record of a sub-batch (e.g. one image of a batch, to cache it)."""
        idx = [index] if isinstance(index, int) else list(index)
        for i in idx:
            if not 0 <= i < len(self):
                raise ValueError(f"index: expected 0..{len(self) - 1}, got {i}")
        sel = torch.tensor(idx, dtype=torch.long, device=self.input.device)

        def pick(d):
            return {k: v.index_select(0, sel) for k, v in d.items()}

        return Record(self.input.index_select(0, sel), self.logits.index_select(0, sel),
                      pick(self.activations), pick(self.switches), pick(self.outputs), pick(self.inputs),
                      dict(self.in_shapes), self.has_switches)

    def to(self, device) -> "Record":
        def mv(d):
            return {k: v.to(device) for k, v in d.items()}

        return Record(self.input.to(device), self.logits.to(device), mv(self.activations), mv(self.switches),
                      mv(self.outputs), mv(self.inputs), dict(self.in_shapes), self.has_switches)


def _max_pool(m: nn.MaxPool2d, x: torch.Tensor, switches: bool):
    if not switches:
        return m(x), None
    return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation,
                        ceil_mode=m.ceil_mode, return_indices=True)


@torch.no_grad()
def record_forward(model: nn.Sequential, layers: dict[str, str], x: torch.Tensor,
                   switches: bool = True) -> Record:
    """Run ``model`` child by child on ``x`` and record what projections need.

    ``layers`` is ``nets.layer_map(model)`` (paper layer -> child name). With
    ``switches=False`` max pools run without recording their switches (a little
    faster, e.g. for scanning a data set); such a record cannot be projected.
    """
    wanted = {child: layer for layer, child in layers.items()}
    activations: dict[str, torch.Tensor] = {}
    sw: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple] = {}
    h = x
    for name, m in model.named_children():
        shapes[name] = tuple(h.shape[1:])
        if isinstance(m, nn.MaxPool2d):
            out, idx = _max_pool(m, h, switches)
            if idx is not None:
                sw[name] = idx
            outputs[name] = out
        else:
            out = m(h)
            if isinstance(m, nn.ReLU):
                outputs[name] = out
            elif isinstance(m, NORMS):
                inputs[name] = h
        if name in wanted:
            activations[wanted[name]] = out
        h = out
    ordered = {layer: activations[layer] for layer in layers if layer in activations}
    return Record(x, h, ordered, sw, outputs, inputs, shapes, switches)
