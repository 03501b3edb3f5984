"""A Python client for the deconvlab REST API (one method per route of ``api/README.md``).

    from deconvlab.client import Client
    c = Client("http://127.0.0.1:8000")
    img = c.upload("dog.jpg")                      # {"image_id", "width", "height"}
    c.predictions(img["image_id"], k=5)
    p = c.projection(img["image_id"], "conv5", 12, format="npy")   # float32 3xHxW numpy array
    c.occlusion(img["image_id"], size=32, stride=8)

Every method raises :class:`ApiError` (status code and the server's detail)
on a non-2xx answer. ``model=None`` means the server's default model.
It needs only ``httpx``; it never imports torch.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """A non-2xx answer: ``status``, ``detail`` (the server's message) and the ``url``."""

    def __init__(self, status: int, detail: Any, url: str, retry_after: str | None = None):
        self.status, self.detail, self.url, self.retry_after = status, detail, url, retry_after
        super().__init__(f"HTTP {status} from {url}: {detail}")


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", model: str | None = None, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None):
        """``model``: the model every call uses unless it names another (None: the server's default)."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    # ---------------------------------------------------------------- plumbing

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _params(self, model: str | None = None, **extra) -> dict:
        p = {k: v for k, v in extra.items() if v is not None}
        m = model or self.model
        if m:
            p["model"] = m
        return p

    def _send(self, method: str, url: str, **kw) -> httpx.Response:
        r = self._http.request(method, url, **kw)
        if not r.is_success:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ApiError(r.status_code, detail, str(r.url), r.headers.get("Retry-After"))
        return r

    def _json(self, method: str, url: str, **kw) -> Any:
        return self._send(method, url, **kw).json()

    def _bytes(self, url: str, **kw) -> bytes:
        return self._send("GET", url, **kw).content

    def get(self, url: str) -> bytes:
        """Any URL the server handed out (``patch_url``, ``urls["activation"]``, ...) as bytes."""
        return self._bytes(url)

    # ---------------------------------------------------------------- system

    def health(self) -> dict:
        return self._json("GET", "/api/health")

    def ready(self) -> dict:
        return self._json("GET", "/api/ready")

    def models(self) -> dict:
        return self._json("GET", "/api/models")

    # ---------------------------------------------------------------- images

    def upload(self, image: str | os.PathLike | bytes, filename: str | None = None) -> dict:
        """Upload a file (path) or raw bytes; ``{"image_id", "width", "height"}``."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            data, name = bytes(image), filename or "upload"
        else:
            path = Path(image)
            data, name = path.read_bytes(), filename or path.name
        return self._json("POST", "/api/images", files={"file": (name, data, "application/octet-stream")})

    def image(self, image_id: str) -> dict:
        return self._json("GET", f"/api/images/{image_id}")

    def input_png(self, image_id: str, model: str | None = None) -> bytes:
        return self._bytes(f"/api/images/{image_id}/input.png", params=self._params(model))

    def predictions(self, image_id: str, k: int = 5, model: str | None = None) -> dict:
        return self._json("GET", f"/api/images/{image_id}/predictions", params=self._params(model, k=k))

    def layer(self, image_id: str, layer: str, model: str | None = None) -> dict:
        return self._json("GET", f"/api/images/{image_id}/layers/{layer}", params=self._params(model))

    def unit(self, image_id: str, layer: str, unit: int, model: str | None = None) -> dict:
        return self._json("GET", f"/api/images/{image_id}/layers/{layer}/units/{unit}", params=self._params(model))

    def map_png(self, image_id: str, layer: str, unit: int, size: int = 112, model: str | None = None) -> bytes:
        return self._bytes(f"/api/images/{image_id}/layers/{layer}/units/{unit}/map.png",
                           params=self._params(model, size=size))

    def projection(self, image_id: str, layer: str, unit: int, method: str = "deconv", seed: str = "point",
                   position: tuple[int, int] | None = None, format: str = "png", model: str | None = None,
                   with_box: bool = False):
        """PNG bytes (``format="png"``) or the float32 3xHxW numpy array (``format="npy"``).

        ``with_box=True`` returns ``(result, box)`` where ``box`` is the
        receptive field ``(top, left, bottom, right)`` of a point seed, else None.
        """
        y, x = position if position is not None else (None, None)
        r = self._send("GET", f"/api/images/{image_id}/layers/{layer}/units/{unit}/projection",
                       params=self._params(model, method=method, seed=seed, y=y, x=x, format=format))
        if format == "npy":
            import numpy as np

            out = np.load(io.BytesIO(r.content), allow_pickle=False)
        else:
            out = r.content
        if not with_box:
            return out
        h = r.headers.get("X-Receptive-Field")
        return out, (tuple(int(v) for v in h.split(",")) if h else None)

    # ---------------------------------------------------------------- top-k and data set

    def top(self, layer: str, unit: int, k: int | None = None, model: str | None = None) -> dict:
        return self._json("GET", f"/api/layers/{layer}/units/{unit}/top", params=self._params(model, k=k))

    def top_patch_png(self, layer: str, unit: int, rank: int, model: str | None = None) -> bytes:
        return self._bytes(f"/api/layers/{layer}/units/{unit}/top/{rank}/patch.png", params=self._params(model))

    def top_projection_png(self, layer: str, unit: int, rank: int, model: str | None = None) -> bytes:
        return self._bytes(f"/api/layers/{layer}/units/{unit}/top/{rank}/projection.png",
                           params=self._params(model))

    def dataset_image(self, image_index: int) -> bytes:
        return self._bytes(f"/api/dataset/images/{image_index}")

    def samples(self, n: int = 12, seed: int = 0) -> dict:
        return self._json("GET", "/api/dataset/samples", params={"n": n, "seed": seed})

    # ---------------------------------------------------------------- analyses

    def occlusion(self, image_id: str, size: int = 32, stride: int = 8, layer: str = "conv5",
                  class_index: int | None = None, model: str | None = None) -> dict:
        body = {"size": size, "stride": stride, "layer": layer, "class_index": class_index}
        return self._json("POST", f"/api/images/{image_id}/occlusion", json=body, params=self._params(model))

    def occlusion_png(self, occlusion_id: str, kind: str = "probability") -> bytes:
        """``kind``: activation, probability or top_class."""
        return self._bytes(f"/api/occlusions/{occlusion_id}/{kind}.png")

    def filters_png(self, layer: str = "conv1", model: str | None = None) -> bytes:
        return self._bytes(f"/api/layers/{layer}/filters.png", params=self._params(model))

    def evolution(self, layer: str, unit: int, model: str | None = None) -> dict:
        return self._json("GET", f"/api/layers/{layer}/units/{unit}/evolution", params=self._params(model))
