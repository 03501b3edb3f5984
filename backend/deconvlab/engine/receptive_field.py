"""Layer geometry -> input boxes (receptive fields).

Zeiler & Fergus (2013), Sec. 4 and Fig. 2, show for each top activation the
"corresponding image patch": the part of the input that the unit at that
position can see. This module computes that box from the architecture alone
(no weights, no data).

Each child of a flat ``nn.Sequential`` maps a spatial interval of its output
to an interval of its input:

* ``Conv2d`` / ``MaxPool2d`` / ``AvgPool2d`` (kernel k, stride s, padding p,
  dilation d): output rows ``[a, b)`` see input rows
  ``[a*s - p, (b-1)*s - p + d*(k-1) + 1)``;
* ``AdaptiveAvgPool2d`` (n_in -> n_out): output bin i averages input rows
  ``[floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))``, as in PyTorch;
* elementwise children (ReLU, LRN, BatchNorm, Dropout, Identity) keep the
  interval;
* ``Flatten`` / ``Linear``: every unit sees the whole input.

Intervals are clipped to the map at every level (positions outside a map do
not exist: they are zero padding), and boxes are ``(top, left, bottom, right)``
in input pixels with ``bottom`` and ``right`` exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .._util import pair

# children that do not move anything spatially
ELEMENTWISE = (nn.ReLU, nn.LocalResponseNorm, nn.BatchNorm2d, nn.Dropout, nn.Identity)
WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class Window:
    """One sliding-window child along both axes: kernel, stride, padding, dilation."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool = False

    @classmethod
    def of(cls, m: nn.Module) -> "Window":
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str):
                raise ValueError(f"receptive field: expected numeric conv padding, got {m.padding!r}")
            return cls(pair(m.kernel_size), pair(m.stride), pair(m.padding), pair(m.dilation))
        if isinstance(m, nn.MaxPool2d):
            stride = m.stride if m.stride is not None else m.kernel_size
            return cls(pair(m.kernel_size), pair(stride), pair(m.padding), pair(m.dilation),
                       bool(m.ceil_mode))
        if isinstance(m, nn.AvgPool2d):
            stride = m.stride if m.stride is not None else m.kernel_size
            return cls(pair(m.kernel_size), pair(stride), pair(m.padding), (1, 1), bool(m.ceil_mode))
        raise TypeError(f"not a sliding-window layer: {type(m).__name__}")

    def out_size(self, n: int, axis: int) -> int:
        """PyTorch's output size along ``axis`` (0: rows, 1: columns) for an input of ``n``."""
        k, s, p, d = self.kernel[axis], self.stride[axis], self.padding[axis], self.dilation[axis]
        span = n + 2 * p - d * (k - 1) - 1
        if span < 0:
            raise ValueError(f"input of {n} px is smaller than a {k}x{k} window (padding {p})")
        if self.ceil_mode:
            out = -(-span // s) + 1
            if (out - 1) * s >= n + p:  # the last window must start inside the input or left padding
                out -= 1
        else:
            out = span // s + 1
        return out

    def extent(self, axis: int) -> int:
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1

    def below(self, o, size: int, axis: int, n_in: int):
        """Windows of ``size`` at offsets ``o`` (ints or a tensor of them) -> the windows of the
        input that they see along ``axis``: (offsets, size); a window as large as the input map
        of ``n_in`` or larger is that map (offset 0). The deconvnet's windows go down this way."""
        o_in = o * self.stride[axis] - self.padding[axis]
        size_in = (size - 1) * self.stride[axis] + self.extent(axis)
        if size_in >= n_in:
            return o_in * 0, n_in
        return o_in, size_in

    def output_padding(self, n_out: int, n_in: int, axis: int) -> int | None:
        """The ``output_padding`` with which the padded transposed conv of a whole ``n_out``
        map gives the whole ``n_in`` input map, or None where PyTorch cannot (it must be
        below max(stride, dilation))."""
        s, p, d = self.stride[axis], self.padding[axis], self.dilation[axis]
        op = n_in - ((n_out - 1) * s - 2 * p + self.extent(axis))
        return op if 0 <= op < max(s, d) else None

    def back(self, a: int, b: int, axis: int) -> tuple[int, int]:
        """Output interval [a, b) -> the input interval it sees (unclipped)."""
        s, p = self.stride[axis], self.padding[axis]
        return a * s - p, (b - 1) * s - p + self.extent(axis)


def adaptive_bin(i: int, n_in: int, n_out: int) -> tuple[int, int]:
    """Input interval [start, end) averaged by output bin ``i`` of AdaptiveAvgPool (PyTorch's rule)."""
    return (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)


def _adaptive_out(m: nn.AdaptiveAvgPool2d, h: int, w: int) -> tuple[int, int]:
    size = m.output_size
    oh, ow = (size, size) if isinstance(size, int) else size
    return (h if oh is None else oh), (w if ow is None else ow)


def spatial_sizes(children: list[tuple[str, nn.Module]], size: tuple[int, int]) -> list[tuple[int, int] | None]:
    """Spatial (H, W) of every child's *input* for an input of ``size``; ``None`` once flattened.

    One more entry at the end: the last child's output.
    """
    out: list[tuple[int, int] | None] = []
    cur: tuple[int, int] | None = tuple(size)
    for _, m in children:
        out.append(cur)
        if cur is None:
            continue
        if isinstance(m, WINDOWED):
            g = Window.of(m)
            cur = (g.out_size(cur[0], 0), g.out_size(cur[1], 1))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            cur = _adaptive_out(m, *cur)
        elif isinstance(m, (nn.Flatten, nn.Linear)):
            cur = None
        elif not isinstance(m, ELEMENTWISE):
            raise TypeError(f"receptive field: no geometry for a {type(m).__name__}; expected one of "
                            f"Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Linear, "
                            f"ReLU, LocalResponseNorm, BatchNorm2d, Dropout, Identity")
    out.append(cur)
    return out


def input_box(children: list[tuple[str, nn.Module]], upto: int, y: int | None, x: int | None,
              size: tuple[int, int], clip: bool = True) -> tuple[int, int, int, int]:
    """Box ``(top, left, bottom, right)`` (bottom/right exclusive) of input pixels that the
    output of child ``upto`` at position ``(y, x)`` depends on.

    ``children`` is a flat ``nn.Sequential``'s ``named_children()`` list and
    ``size`` the input's (H, W). A flattened output (fc layer) sees the whole
    input, as does ``y = x = None``. With ``clip=False`` intervals are not cut
    at map borders, which gives every position a box of the same size (the
    unit's full receptive field, partly over padding near borders).
    """
    sizes = spatial_sizes(children[:upto + 1], size)
    if sizes[upto + 1] is None or y is None or x is None:
        return 0, 0, int(size[0]), int(size[1])
    oh, ow = sizes[upto + 1]
    if not (0 <= y < oh and 0 <= x < ow):
        raise ValueError(f"position: expected (y, x) with y in 0..{oh - 1} and x in 0..{ow - 1}, got ({y}, {x})")
    t, b, l, r = y, y + 1, x, x + 1
    for i in range(upto, -1, -1):
        m = children[i][1]
        hin, win = sizes[i]
        if isinstance(m, WINDOWED):
            g = Window.of(m)
            t, b = g.back(t, b, 0)
            l, r = g.back(l, r, 1)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            hout, wout = sizes[i + 1]
            t, b = adaptive_bin(t, hin, hout)[0], adaptive_bin(b - 1, hin, hout)[1]
            l, r = adaptive_bin(l, win, wout)[0], adaptive_bin(r - 1, win, wout)[1]
        if clip:
            t, b, l, r = max(t, 0), min(b, hin), max(l, 0), min(r, win)
    return t, l, b, r


def box_size(children: list[tuple[str, nn.Module]], upto: int, size: tuple[int, int]) -> tuple[int, int]:
    """Unclipped receptive-field size (height, width) of one position of child ``upto``."""
    sizes = spatial_sizes(children[:upto + 1], size)
    if sizes[upto + 1] is None:
        return int(size[0]), int(size[1])
    t, l, b, r = input_box(children, upto, 0, 0, size, clip=False)
    return b - t, r - l
