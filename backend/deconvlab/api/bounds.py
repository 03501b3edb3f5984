"""Bounded requests and answers (issue 12): a cap on request bodies, a cap on every error detail.

=======================================  ==========================================================
rule                                     how
=======================================  ==========================================================
a request body over ``max_body_bytes``   413 ``request body too large: expected at most N bytes,
(1 MiB; not multipart uploads, which     got more than N`` from ``Content-Length`` at once, or once
have ``max_upload_bytes``)               that many bytes have streamed in (chunked bodies); the body
                                         is read at most once, never past the cap
an echoed value in a detail              ``errors.echo``: at most 80 characters, "…" when cut
any error detail                         at most ``DETAIL_CHARS`` characters (a last line of
                                         defence for messages that quote a library's error)
=======================================  ==========================================================

``BodyCap`` is ASGI middleware: a body under the cap is read whole (it is
small) and handed to the app unchanged; the app never sees a body over it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .runner import Cancelled

DETAIL_CHARS = 2000  # longest error detail answered


def bounded(detail) -> str:
    """``detail`` as a string of at most ``DETAIL_CHARS`` characters ("…" when cut)."""
    text = detail if isinstance(detail, str) else str(detail)
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS - 1] + "…"


def _too_large(cap: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body too large: expected at most {cap} bytes, got more than {cap}"},
                        status_code=413)


class BodyCap:
    """ASGI middleware: 413 for a request body over ``cap`` bytes (multipart uploads excepted)."""

    def __init__(self, app, cap: int):
        self.app = app
        self.cap = cap

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            return await self.app(scope, receive, send)  # the upload route counts its own bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.cap:
            return await _too_large(self.cap)(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            size += len(message.get("body", b""))
            if size > self.cap:
                return await _too_large(self.cap)(scope, receive, send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def install(app: FastAPI, max_body_bytes: int) -> None:
    """Add ``BodyCap``, the detail cap, and the (unread) answer to a job whose client left."""
    app.add_middleware(BodyCap, cap=max_body_bytes)

    @app.exception_handler(Cancelled)
    async def _cancelled(request: Request, exc: Cancelled):  # nobody reads it: the client has gone
        return JSONResponse({"detail": str(exc)}, status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": bounded(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
