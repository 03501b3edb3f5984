"""AlexNet and VGG-16 from torchvision, renamed to the paper's layer names.

torchvision keeps its layers in ``features`` / ``avgpool`` / ``classifier``
with numeric names and in-place ReLUs. ``rename`` rebuilds the same layers
(the conv and linear modules are shared, not copied) as one flat
``nn.Sequential`` named ``conv1, relu1, pool1, ..., fc6, relu6, ..., fc8``,
with fresh, non-in-place ReLUs so that each can be hooked on its own.

Weights come from a local file, from torchvision's cache, or (for users with a
network) from torchvision's download URL through ``torch.hub``; see
``load_torchvision_weights``. Tests only ever use random or local weights.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

# torchvision's published ImageNet weights (torchvision.models.AlexNet_Weights.IMAGENET1K_V1 etc.)
WEIGHT_URLS = {
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
}


def rename(tv_model: nn.Module) -> nn.Sequential:
    """Flatten a torchvision AlexNet/VGG into a named Sequential (conv1..convN, fc6..fc8)."""
    out: "OrderedDict[str, nn.Module]" = OrderedDict()
    conv = 0
    last = ""
    for m in tv_model.features:
        if isinstance(m, nn.Conv2d):
            conv += 1
            last = str(conv)
            out[f"conv{last}"] = m
        elif isinstance(m, nn.ReLU):
            out[f"relu{last}"] = nn.ReLU()
        elif isinstance(m, nn.MaxPool2d):
            out[f"pool{last}"] = m
        else:
            raise ValueError(f"unexpected layer in features: {type(m).__name__}")
    out["avgpool"] = tv_model.avgpool
    out["flatten"] = nn.Flatten()
    fc = 5
    drop = 0
    for m in tv_model.classifier:
        if isinstance(m, nn.Linear):
            fc += 1
            out[f"fc{fc}"] = m
        elif isinstance(m, nn.ReLU):
            # VGG has conv6..conv13 with relu6..relu13 already: its fc ReLUs get their own names
            name = f"relu{fc}" if f"relu{fc}" not in out else f"relu_fc{fc}"
            out[name] = nn.ReLU()
        elif isinstance(m, nn.Dropout):
            drop += 1
            out[f"drop{fc + 1}"] = m
        else:
            raise ValueError(f"unexpected layer in classifier: {type(m).__name__}")
    return nn.Sequential(out)


def alexnet(num_classes: int = 1000) -> nn.Sequential:
    from torchvision.models import alexnet as tv_alexnet

    return rename(tv_alexnet(weights=None, num_classes=num_classes))


def vgg16(num_classes: int = 1000) -> nn.Sequential:
    from torchvision.models import vgg16 as tv_vgg16

    return rename(tv_vgg16(weights=None, num_classes=num_classes))


def load_torchvision_weights(arch: str, model: nn.Sequential, source: str | Path | None = None,
                             model_dir: str | Path | None = None, progress: bool = True) -> None:
    """Load torchvision's ImageNet weights for ``arch`` into a renamed ``model``.

    ``source`` is a local ``.pth`` file or a URL; by default torchvision's own
    URL, which ``torch.hub`` takes from its cache (``$TORCH_HOME/hub/checkpoints``)
    when the file is already there and downloads otherwise, checking the hash
    prefix in the file name. The state dict is read with ``weights_only=True``.
    """
    if arch not in WEIGHT_URLS:
        raise ValueError(f"arch: expected one of {sorted(WEIGHT_URLS)}, got {arch!r}")
    src = str(source) if source is not None else WEIGHT_URLS[arch]
    if "://" in src:
        state = torch.hub.load_state_dict_from_url(
            src, model_dir=str(model_dir) if model_dir else None, map_location="cpu",
            progress=progress, check_hash=True, weights_only=True)
    else:
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    tv = {"alexnet": _tv_alexnet, "vgg16": _tv_vgg16}[arch]()
    tv.load_state_dict(state)
    renamed = rename(tv)
    model.load_state_dict(renamed.state_dict())


def _tv_alexnet() -> nn.Module:
    from torchvision.models import alexnet as tv_alexnet

    return tv_alexnet(weights=None)


def _tv_vgg16() -> nn.Module:
    from torchvision.models import vgg16 as tv_vgg16

    return tv_vgg16(weights=None)
