"""``deconvlab serve``: the REST API and the browser app (FastAPI under uvicorn).

Every option defaults to ``None``, so that only what is given on the command
line overrides ``Settings`` (which reads the ``DECONVLAB_*`` environment).

``--model NAME_OR_FILE`` (repeatable) and ``--models a,b`` add up, in that order, to
``Settings.serve_models``: each a registry name (``deconvlab register`` writes one), a
checkpoint, a ``.pt2``/TorchScript file (served under its file name's stem) or
``torchvision:<arch>`` (random weights); none: every model of the registry.
"""

from __future__ import annotations

from .options import Command


def _serve_options(p) -> None:
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1, DECONVLAB_HOST)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8000, DECONVLAB_PORT)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto, DECONVLAB_DEVICE)")
    p.add_argument("--model", action="append", default=None, dest="model",
                   help="a registry name or a model file to serve (repeatable; default: every registered model)")
    p.add_argument("--models", default=None, help="comma-separated registry names or files to serve (default: all)")
    p.add_argument("--data", default=None, help="ImageFolder root for the top-k index (DECONVLAB_DATA)")
    p.add_argument("--state-dir", "--data-dir", dest="state_dir", default=None,
                   help="uploads and results (DECONVLAB_STATE_DIR; --data-dir is the old name)")
    p.add_argument("--build-index", action="store_true", default=None,
                   help="build a missing or stale top-k index in the background (DECONVLAB_BUILD_INDEX)")
    p.add_argument("--log-level", default="info")


def serve_settings(args):
    """The ``Settings`` the parsed options describe (the environment for what they leave out)."""
    from ..api import Settings

    models = [*(args.model or []), *(m for m in (args.models or "").split(",") if m.strip())]
    given = {"host": args.host, "port": args.port, "device": args.device,
             "serve_models": ",".join(models) if models else None,
             "data": args.data, "state_dir": args.state_dir, "build_index": args.build_index}
    return Settings(**{k: v for k, v in given.items() if v is not None})


def _serve(args) -> int:
    import uvicorn

    from ..api import create_app

    settings = serve_settings(args)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level)
    return 0


# A server shares its cores with its clients: OpenMP threads that spin while idle
# slowed a cold request 3x on a busy 2-core machine. Must be set before torch loads.
SERVE = Command("the REST API and the browser app (FastAPI under uvicorn)", _serve_options, _serve,
                env={"OMP_WAIT_POLICY": "PASSIVE"})
