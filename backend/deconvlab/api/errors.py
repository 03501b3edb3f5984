"""The one place where errors become status codes.

Every error answer is ``{"detail": "<one sentence>"}`` (FastAPI's shape, with
a string detail, also for request validation), so the browser app can show it
as it is.

=====================================  ======
library / server error                 status
=====================================  ======
unknown model, layer, image, ...       404 (``NotFound``; ``KeyError`` from the library)
unit, position, k, size, stride, ...   422 (``ValueError`` from the library; request validation)
corrupt, truncated, empty upload       422 (``storage.CorruptImage``)
upload over the byte or pixel limit    413 (``storage.TooLarge``)
format outside the allow-list          415 (``storage.UnsupportedFormat``)
inference queue full                   429 with ``Retry-After`` (``runner.QueueFull``)
top-k index missing or stale           503 (``IndexUnavailable``; ``index.StaleIndexError``)
model failed to load                   503 (``ModelUnavailable``)
=====================================  ======
"""

from __future__ import annotations

from contextlib import contextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .runner import QueueFull
from .storage import CorruptImage, TooLarge, UnsupportedFormat


class NotFound(HTTPException):
    def __init__(self, detail: str):
        super().__init__(404, detail)


class Unprocessable(HTTPException):
    def __init__(self, detail: str):
        super().__init__(422, detail)


class IndexUnavailable(HTTPException):
    def __init__(self, detail: str):
        super().__init__(503, detail)


class ModelUnavailable(HTTPException):
    def __init__(self, detail: str):
        super().__init__(503, detail)


def _message(e: BaseException) -> str:
    # KeyError's str() adds quotes around its message; take the message itself
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


@contextmanager
def library_errors():
    """Around a library call: KeyError -> 404, ValueError/IndexError -> 422, with the library's message."""
    try:
        yield
    except HTTPException:
        raise
    except KeyError as e:
        raise NotFound(_message(e)) from None
    except (ValueError, IndexError) as e:
        raise Unprocessable(_message(e)) from None


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        where = ".".join(loc) or "request"
        msg = err.get("msg", "invalid")
        if "input" in err and err.get("type") != "missing":
            parts.append(f"{where}: {msg}, got {err['input']!r}")
        else:
            parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=429,
                            headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooLarge)
    async def _too_large(request: Request, exc: TooLarge):
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(UnsupportedFormat)
    async def _unsupported(request: Request, exc: UnsupportedFormat):
        return JSONResponse({"detail": str(exc)}, status_code=415)

    @app.exception_handler(CorruptImage)
    async def _corrupt(request: Request, exc: CorruptImage):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    try:
        from ..index import StaleIndexError
    except ImportError:  # pragma: no cover - the top-k module is part of the package
        return

    @app.exception_handler(StaleIndexError)
    async def _stale(request: Request, exc: StaleIndexError):
        return JSONResponse({"detail": str(exc)}, status_code=503)
