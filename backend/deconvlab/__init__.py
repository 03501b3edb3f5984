"""deconvlab: see what a convolutional network has learned (Zeiler & Fergus, 2013).

    import deconvlab
    net = deconvlab.load("zfnet-imagenette")
    rec = net.forward(net.preprocess(image))
    p = net.project(rec, layer="conv5", unit=12)

The public names are imported on first use, so ``import deconvlab`` stays light
(no torch until a name that needs it is touched):

==============  ===============================================  ==========================
name            what it is                                       where it lives
==============  ===============================================  ==========================
``load``        a registered model or checkpoint -> ``Net``      here
``Net``         one model: preprocess, forward, project          ``deconvlab.net``
``TopKIndex``   a unit's top-9 data-set patches (Fig. 2)         ``deconvlab.index``
``occlusion``   occlusion sensitivity maps (Fig. 7)              ``deconvlab.analyses``
``render``      projections and feature maps -> images           ``deconvlab.render``
``show``        one unit's page (notebook, HTML file; issue 16)  ``deconvlab.analyses``
==============  ===============================================  ==========================
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {  # public name -> (module, attribute or None for the module itself)
    "Net": ("deconvlab.net", "Net"),
    "TopKIndex": ("deconvlab.index", "TopKIndex"),
    "occlusion": ("deconvlab.analyses.occlusion", "occlusion"),
    "render": ("deconvlab.render", None),
    "sanity": ("deconvlab.analyses.sanity", None),
    "compare": ("deconvlab.analyses.compare", None),
    "region": ("deconvlab.analyses.region", None),
    "faithfulness": ("deconvlab.analyses.faithfulness", None),
    "show": ("deconvlab.analyses.unit_report", "show"),
}

__all__ = ["load", "__version__", *_LAZY]


def load(name_or_path: str = "zfnet-imagenette", device: str = "auto"):
    """Load a registered model or a checkpoint as a :class:`deconvlab.net.Net`."""
    from .net import Net

    return Net.load(name_or_path, device=device)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'deconvlab' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = import_module(module)
    return value if attr is None else getattr(value, attr)
