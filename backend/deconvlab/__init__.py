"""deconvlab: see what a convolutional network has learned (Zeiler & Fergus, 2013).

    import deconvlab
    net = deconvlab.load("zfnet-imagenette")
    rec = net.forward(net.preprocess(image))
    p = net.project(rec, layer="conv5", unit=12)
"""

__version__ = "0.1.0"


def load(name_or_path: str = "zfnet-imagenette", device: str = "auto"):
    """Load a registered model or a checkpoint as a :class:`deconvlab.net.Net`."""
    from .net import Net

    return Net.load(name_or_path, device=device)


def __getattr__(name):  # lazy, so `import deconvlab` stays light
    if name == "Net":
        from .net import Net
        return Net
    raise AttributeError(name)
