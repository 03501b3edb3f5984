"""ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) with a width multiplier.

torchvision's own ``ResNet`` and ``BasicBlock``, so the module tree, the names
(``conv1``, ``layer1.0.conv1``, ..., ``fc``) and the forward code are exactly
torchvision's -- in-place ReLUs, one ReLU module called twice per block --
which is the case the graph engine has to get right. Only the stage widths
change: ``width * (64, 128, 256, 512)`` channels.

==========  ===============================  ================================
width       channels of the four stages      multiply-adds at 224 px
==========  ===============================  ================================
1.0         64, 128, 256, 512                1.82 G (torchvision's resnet18)
0.5         32, 64, 128, 256                 about a quarter of that
==========  ===============================  ================================
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

STAGE_WIDTHS = (64, 128, 256, 512)


def resnet18(num_classes: int = 1000, width: float = 1.0, zero_init_residual: bool = False) -> ResNet:
    """torchvision's resnet18 topology with ``width`` times its channels (1.0: torchvision's own)."""
    if not width > 0:
        raise ValueError(f"width: expected a positive multiplier, got {width!r}")
    c = [max(1, int(round(w * width))) for w in STAGE_WIDTHS]
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, zero_init_residual=zero_init_residual)
    if c == list(STAGE_WIDTHS):
        return model
    # ResNet.__init__ fixes the widths; rebuild the stem and the stages with torchvision's own
    # _make_layer (it reads and advances model.inplanes), then re-run its initialisation.
    model.inplanes = c[0]
    model.conv1 = nn.Conv2d(3, c[0], kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(c[0])
    model.layer1 = model._make_layer(BasicBlock, c[0], 2)
    model.layer2 = model._make_layer(BasicBlock, c[1], 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, c[2], 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, c[3], 2, stride=2)
    model.fc = nn.Linear(c[3], num_classes)
    for m in model.modules():  # torchvision's initialisation, as in ResNet.__init__
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        if zero_init_residual and isinstance(m, BasicBlock):
            nn.init.constant_(m.bn2.weight, 0)
    return model
