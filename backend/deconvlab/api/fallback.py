"""What ``/api/...`` answers when no route takes the request: 405 with the real ``Allow``, or a JSON 404.

Without it a request that matches no API route falls through to the browser
app's static mount at ``/``, which answers ``GET /api/images/x/occlusion``
with a 404 and ``POST /api/health`` with ``405 Allow: GET, HEAD``, whatever
the route really allows. Here, added after the API routes and before any
mount:

=====================================================  ==============================================
request                                                answer
=====================================================  ==============================================
a path an API route has, with a method it does not     405 ``{"detail"}``, ``Allow`` = the methods of
                                                       every route on that path
a path under ``/api`` that no route has                404 ``{"detail": "Not Found: ..."}``
=====================================================  ==============================================
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match, Mount

from .errors import echo

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
NAME = "deconvlab-unmatched-api"


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """Every method some API route of ``app`` (not this catch-all, not a mount) takes on the request's path."""
    out = []
    for method in METHODS:
        probe = {**scope, "method": method}
        for route in app.router.routes:
            if getattr(route, "name", None) == NAME or isinstance(route, Mount):
                continue
            if route.matches(probe)[0] == Match.FULL:
                out.append(method)
                break
    return out


def install(app: FastAPI, prefix: str = "/api") -> None:
    """Add the catch-all route under ``prefix`` (call it after including the API routers)."""

    async def unmatched(request: Request, rest: str) -> JSONResponse:
        path = request.url.path
        allow = allowed_methods(app, request.scope)
        if allow:
            return JSONResponse({"detail": f"method {request.method} not allowed on {echo(path)}: expected "
                                           f"{', '.join(allow)}"}, status_code=405, headers={"Allow": ", ".join(allow)})
        return JSONResponse({"detail": f"Not Found: no API route at {echo(path)} (the routes: /docs)"},
                            status_code=404)

    app.add_api_route(prefix + "/{rest:path}", unmatched, methods=METHODS, name=NAME,
                      include_in_schema=False)
