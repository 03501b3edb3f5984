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
sides too far apart (max_aspect)       422 (``storage.BadShape``; upload and every later read)
upload over the byte or pixel limit    413 (``storage.TooLarge``)
format outside the allow-list          415 (``storage.UnsupportedFormat``)
inference queue full                   429 with ``Retry-After`` (``runner.QueueFull``)
top-k index missing or stale           503 (``IndexUnavailable``; ``index.StaleIndexError``)
model failed to load                   503 (``ModelUnavailable``)
anything else (a bug, a library error)  500 ``{"detail", "error_id"}`` (``ServerErrors``)
=====================================  ======

Nothing becomes a text/plain 500: ``ServerErrors`` (an ASGI middleware round
the routes) turns an exception no handler above took -- raised in a route, a
dependency, or a job on the runner's thread that the route awaited -- into
``{"detail": "unexpected server error (<type>); ...", "error_id": "<12 hex>"}``
and logs the traceback under the same id (logger ``deconvlab.api``). The
detail names the exception's type, never its message (paths, values). An
exception after the answer has started streaming cannot change its status:
it is logged with an id and re-raised. A handler for ``Exception`` backs the
middleware up for errors raised outside it (middleware added later).
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .runner import QueueFull
from .storage import BadShape, CorruptImage, TooLarge, UnsupportedFormat

log = logging.getLogger("deconvlab.api")


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


# ---- echoed values and JSON bodies (issue 12: bounded answers; added by the API routes' helper)

ECHO_CHARS = 80  # longest echo of a client's value in a detail


def echo(value, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, ending in "…" when cut: a detail never repeats
    a client's input in full (a 200 MB string as ``size`` is answered in a few hundred bytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _json_where(body: bytes | None, offset) -> str:
    """``line L, column C`` of character ``offset`` of the body (both from 1), or ``character N``."""
    if not isinstance(offset, int):
        return "an unknown place"
    if body is None:
        return f"character {offset + 1}"
    head = body.decode("utf-8", "replace")[:offset]  # the offset counts characters of the decoded text
    return f"line {head.count(chr(10)) + 1}, column {offset - head.rfind(chr(10))}"


def _validation_message(exc: RequestValidationError, body: bytes | None = None) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        where = ".".join(loc) or "request"
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            why = (err.get("ctx") or {}).get("error", "")
            loc = err.get("loc", ())
            parts.append(f"the body is not valid JSON: {why or 'decode error'} at "
                         f"{_json_where(body, loc[1] if len(loc) > 1 else None)}")
        elif "input" in err and err.get("type") != "missing":
            parts.append(f"{where}: {msg}, got {echo(err['input'])}")
        else:
            parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def _server_error(exc: BaseException, method: str, path: str) -> JSONResponse:
    """The JSON 500 of an unexpected exception, logged (with its traceback) under a fresh id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error %s on %s %s: %s: %s", error_id, method, path, type(exc).__name__, exc,
              exc_info=(type(exc), exc, exc.__traceback__))
    return JSONResponse({"detail": f"unexpected server error ({type(exc).__name__}); the server log has "
                                   f"its details under error_id {error_id}", "error_id": error_id},
                        status_code=500)


class ServerErrors:
    """ASGI middleware: an exception that reaches it becomes ``_server_error``'s JSON 500 (see the module doc)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 -- the point: nothing escapes as text/plain
            response = _server_error(exc, scope.get("method", ""), scope.get("path", ""))
            if started:
                raise
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Register the handlers above on ``app`` (and the ``ServerErrors`` middleware)."""
    app.add_middleware(ServerErrors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return _server_error(exc, request.method, request.url.path)

    @app.exception_handler(BadShape)
    async def _bad_shape(request: Request, exc: BadShape):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        try:
            body = await request.body()  # already read (and kept) by the route: where a JSON error is
        except RuntimeError:
            body = None
        return JSONResponse({"detail": _validation_message(exc, body)}, status_code=422)

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
