"""ZFNet: the network of Zeiler & Fergus (2013), Fig. 3, written as data.

Read top to bottom:

1. ``ZFNetConfig`` says everything that can vary (width, fc size, which
   normalisation, the first layer's kernel and stride for the ablation).
2. ``CONV_CFG`` lists the five conv stages of Fig. 3 as plain tuples.
3. ``zfnet(config)`` turns the two into one flat ``nn.Sequential`` whose
   children carry the paper's names: ``conv1, relu1, pool1, norm1, ... fc8``.

With the default config and a 224x224x3 input the feature maps are 110, 55,
26, 13, 13, 13 and 6 pixels across, exactly as in the figure:

    conv1 7x7/2 pad 1 -> 110, pool 3x3/2 (ceil) -> 55, conv2 5x5/2 -> 26,
    pool 3x3/2 (ceil) -> 13, conv3..conv5 3x3/1 pad 1 -> 13, pool -> 6.

Every ReLU is its own ``nn.ReLU`` module (never ``F.relu``, never in-place),
because the deconvnet and tools such as Captum hook them.

The ``avgpool`` stage (adaptive average pooling to 6x6, as in torchvision's
AlexNet) is the identity at the model's 224 px input; it only lets training
run at a smaller resolution for its early epochs (progressive resizing).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class ZFNetConfig:
    num_classes: int = 1000  # C in the C-way softmax (fc8)
    width: float = 1.0  # multiplier on every conv layer's filter count (96, 256, 384, 384, 256)
    fc_size: int = 4096  # units in fc6 and in fc7
    input_size: int = 224  # side of the square input the model is used at
    norm: str = "lrn"  # after pool1/pool2: "lrn" (the paper's local contrast normalisation),
    #                     "batch" (batch norm after every conv, for training; fold before use), "none"
    dropout: float = 0.5  # dropout probability before fc6 and fc7
    conv1_kernel: int = 7  # 7 in ZFNet; 11 for Krizhevsky's first layer (architecture ablation)
    conv1_stride: int = 2  # 2 in ZFNet; 4 for Krizhevsky's first layer
    drop_layers: list[str] = field(default_factory=list)  # ablation: any of conv3, conv4, fc6, fc7

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ZFNetConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown ZFNetConfig fields: expected some of "
                             f"{sorted(cls.__dataclass_fields__)}, got {unknown}")
        return cls(**known)


# name, filters (at width 1), kernel, stride, padding, max pool after?, normalise after?
CONV_CFG = [
    ("conv1", 96, 7, 2, 1, True, True),
    ("conv2", 256, 5, 2, 0, True, True),
    ("conv3", 384, 3, 1, 1, False, False),
    ("conv4", 384, 3, 1, 1, False, False),
    ("conv5", 256, 3, 1, 1, True, False),
]

POOL_OUTPUT = 6  # pool5's output is 6x6 at 224 px (Fig. 3)


def _lrn() -> nn.Module:
    # Local response normalisation across 5 neighbouring feature maps, the
    # usual reading of "local contrast normalisation" in Caffe's ZFNet/AlexNet.
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)


def zfnet(config: ZFNetConfig | None = None) -> nn.Sequential:
    """Build a ZFNet as one flat, named ``nn.Sequential``."""
    c = config or ZFNetConfig()
    if c.norm not in ("lrn", "batch", "none"):
        raise ValueError(f"norm: expected 'lrn', 'batch' or 'none', got {c.norm!r}")
    bad = sorted(set(c.drop_layers) - {"conv3", "conv4", "fc6", "fc7"})
    if bad:
        raise ValueError(f"drop_layers: expected a subset of conv3, conv4, fc6, fc7, got {bad}")
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    in_ch = 3
    for name, filters, k, s, p, pool, norm in CONV_CFG:
        if name in c.drop_layers:
            continue
        n = name[4:]
        if name == "conv1":
            k, s = c.conv1_kernel, c.conv1_stride
        out_ch = max(1, int(round(filters * c.width)))
        layers[name] = nn.Conv2d(in_ch, out_ch, k, stride=s, padding=p, bias=c.norm != "batch")
        if c.norm == "batch":
            layers[f"bn{n}"] = nn.BatchNorm2d(out_ch)
        layers[f"relu{n}"] = nn.ReLU()
        if pool:
            layers[f"pool{n}"] = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        if norm and c.norm == "lrn":
            layers[f"norm{n}"] = _lrn()
        in_ch = out_ch
    layers["avgpool"] = nn.AdaptiveAvgPool2d(POOL_OUTPUT)
    layers["flatten"] = nn.Flatten()
    in_f = in_ch * POOL_OUTPUT * POOL_OUTPUT
    for name in ("fc6", "fc7"):
        if name in c.drop_layers:
            continue
        n = name[2:]
        layers[f"drop{n}"] = nn.Dropout(c.dropout)
        layers[name] = nn.Linear(in_f, c.fc_size)
        layers[f"relu{n}"] = nn.ReLU()
        in_f = c.fc_size
    layers["fc8"] = nn.Linear(in_f, c.num_classes)
    model = nn.Sequential(layers)
    init_weights(model)
    return model


def init_weights(model: nn.Module, std: float = 1e-2) -> None:
    """The paper's initialisation: weights N(0, 1e-2), biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def he_init(model: nn.Module, seed: int = 0, bias: float = 0.05) -> nn.Module:
    """He-normal weights and small random biases from ``seed``, in place.

    Random weights whose activations stay O(1) through every layer: what the
    tests and benchmarks use in place of a trained model (the paper's N(0, 1e-2)
    init, ``init_weights``, makes deep activations vanish).
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * bias)
    return model


@torch.no_grad()
def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """Return a copy of ``model`` with every BatchNorm2d folded into the conv before it.

    In eval mode a batch norm is an affine map per channel, so
    ``bn(conv(x)) == conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and
    ``b' = (b - m) * g / sqrt(v + eps) + beta``. The folded network computes
    the same function and has plain conv filters for the deconvnet to transpose.
    """
    out: "OrderedDict[str, nn.Module]" = OrderedDict()
    items = list(model.named_children())
    i = 0
    while i < len(items):
        name, m = items[i]
        nxt = items[i + 1][1] if i + 1 < len(items) else None
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            bn = nxt
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                             padding=m.padding, dilation=m.dilation, groups=m.groups, bias=True)
            conv.weight.copy_(m.weight * scale[:, None, None, None])
            b = m.bias if m.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias.copy_((b - bn.running_mean) * scale + bn.bias)
            out[name] = conv
            i += 2
            continue
        out[name] = m
        i += 1
    return nn.Sequential(out)


def feature_sizes(config: ZFNetConfig | None = None, input_size: int | None = None) -> dict[str, tuple]:
    """Output shape (C, H, W) or (C,) of every named layer for one input, without weights."""
    c = config or ZFNetConfig()
    s = input_size or c.input_size
    model = zfnet(c).eval()
    shapes = {}
    x = torch.zeros(1, 3, s, s)
    with torch.no_grad():
        for name, m in model.named_children():
            x = m(x)
            shapes[name] = tuple(x.shape[1:])
    return shapes
