"""Reading an upload: the multipart part ``file``, counted while it streams in (``read_upload``).

``UPLOAD_OPENAPI`` describes that body for ``/openapi.json`` (the route reads
the stream itself, so FastAPI cannot infer it).
"""

from __future__ import annotations

from fastapi import Request

from .errors import Unprocessable, echo
from .storage import TooLarge


async def read_upload(request: Request, field_name: str = "file") -> tuple[bytes, str]:
    """The bytes and file name of the multipart part ``field_name``, counted while they stream in.

    The size limit (``Settings.max_upload_bytes``) applies to the part's
    bytes as they arrive, whatever Content-Length says; past it the rest of
    the body is read and dropped (up to a hard cap, so that the client gets
    the 413 rather than a reset connection) and ``TooLarge`` is raised.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    limit = request.app.state.deconvlab.settings.max_upload_bytes
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise Unprocessable(f"upload: expected a multipart/form-data body with a {field_name!r} field, "
                            f"got content type {echo(ctype.decode('latin-1') or 'none')}")
    part = {"name": None, "filename": "", "headers": {}, "field": b"", "value": b""}
    found: dict = {}
    chunks: list[bytes] = []
    size = [0, False]  # bytes of our part, over the limit?

    def on_part_begin():
        part.update(name=None, filename="", headers={}, field=b"", value=b"")

    def on_header_field(data, start, end):
        part["field"] += data[start:end]

    def on_header_value(data, start, end):
        part["value"] += data[start:end]

    def on_header_end():
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_headers_finished():
        _, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        part["filename"] = opts.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(data, start, end):
        if part["name"] != field_name or "done" in found:
            return
        size[0] += end - start
        if size[0] > limit:
            size[1] = True
            chunks.clear()
        elif not size[1]:
            chunks.append(bytes(data[start:end]))

    def on_part_end():
        if part["name"] == field_name and "done" not in found:
            found["done"] = True
            found["filename"] = part["filename"]

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    received = 0
    body_cap = limit + (1 << 20)  # the whole body: the file plus at most 1 MiB of other parts and headers
    hard_cap = 4 * limit + (1 << 20)
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_cap:
                size[1] = True
            if size[1]:
                if received > hard_cap:
                    break
                continue  # drain: the answer is 413 either way
            parser.write(chunk)
        if not size[1]:
            parser.finalize()
    except FormParserError as e:
        raise Unprocessable(f"upload: malformed multipart body ({e})") from None
    if size[1]:
        raise TooLarge(f"upload too large: expected at most {limit} bytes, got more than {limit}"
                       + ("" if size[0] > limit else " in the request body"))
    if "done" not in found:
        raise Unprocessable(f"upload: expected a multipart field named {field_name!r}, got none")
    return b"".join(chunks), found.get("filename", "")


UPLOAD_OPENAPI = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF"}}}}}}}
