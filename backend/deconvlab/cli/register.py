"""``deconvlab register``: the user's own model as a registry entry (issue 13, "Bringing a model").

``deconvlab register NAME --arch torchvision:resnet50 --weights FILE [--classes FILE]
[--input-size 224 --mean .. --std ..]`` validates the model (``nets.user_models.register``:
it builds the architecture, loads the weights and checks that a zero image gives
``(1, classes)``) and writes its entry into ``registry.json`` of the models folder
(``nets.models_dir()``: ``$DECONVLAB_MODELS``, else the user folder under
``$DECONVLAB_CACHE``), keeping the other entries. ``deconvlab serve --model NAME``
then serves it.

=========================================  ==============================================
bad input                                  what happens
=========================================  ==============================================
unknown arch, weights that do not fit it,  ``deconvlab register: error: <the library's
wrong number of classes, bad mean/std      message>`` on stderr, exit status 2
a weights or classes file that is missing  the same (``FileNotFoundError``)
=========================================  ==============================================

On success it prints one JSON line: the registry file, the name and the entry written.
"""

from __future__ import annotations

import json

from .options import Command


def _register_options(p) -> None:
    p.add_argument("name", help="the model's id (in the registry, in ?model=, in serve --model)")
    p.add_argument("--arch", required=True, help="torchvision:<name> (e.g. torchvision:resnet50), export or torchscript")
    p.add_argument("--weights", default=None,
                   help="weights file (.safetensors/.pth), a program file (.pt2), or 'torchvision' (its cache)")
    p.add_argument("--classes", default=None, help="class names: a JSON list or one name a line (default: numbered)")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the weights' own, else 224)")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="1 (grayscale) or 3 values (default ImageNet's)")
    p.add_argument("--std", type=float, nargs="+", default=None, help="as many values as --mean")
    p.add_argument("--trust", action="store_true", help="allow a TorchScript file (it can run arbitrary code)")
    p.add_argument("--models-dir", default=None, help="the models folder (default: DECONVLAB_MODELS / the user folder)")


def _register(args) -> int:
    from ..nets import read_registry
    from ..nets.user_models import register

    path = register(args.name, args.arch, weights=args.weights, classes=args.classes, input_size=args.input_size,
                    mean=args.mean, std=args.std, models_dir=args.models_dir, trust=args.trust)
    entry = read_registry(path.parent)["models"][args.name]
    print(json.dumps({"registry": str(path), "name": args.name, "entry": entry}))
    return 0


REGISTER = Command("validate the user's own model and write its registry entry (serve it with serve --model)",
                   _register_options, _register)
