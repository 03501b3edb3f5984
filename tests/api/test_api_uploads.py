"""Uploads: bad input gets a clear error and breaks nothing; good input in any mode is taken; restarts keep uploads."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from deconvlab.api import Settings, create_app


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG claiming ``width`` x ``height`` with a few rows of data: a bomb's header, cheaply."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def settings(small_models_dir, tmp_path_factory):
    return Settings(models=str(small_models_dir), data_dir=str(tmp_path_factory.mktemp("state")), device="cpu",
                    max_upload_bytes=200_000)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def first(client, sample_image):
    """An upload made before all the bad ones; it must survive them."""
    r = client.post("/api/images", files={"file": ("first.png", encode(sample_image, "PNG"), "image/png")})
    assert r.status_code == 201
    iid = r.json()["image_id"]
    return iid, client.get(f"/api/images/{iid}/input.png").content


def upload(client, data: bytes, name: str = "x.jpg", ctype: str = "image/jpeg"):
    return client.post("/api/images", files={"file": (name, data, ctype)})


def still_fine(client, first):
    assert client.get("/api/health").json() == {"status": "ok"}
    iid, view = first
    assert client.get(f"/api/images/{iid}").status_code == 200
    assert client.get(f"/api/images/{iid}/input.png").content == view


def _truncated_jpeg(im):
    data = encode(im, "JPEG", quality=90)
    return data[:len(data) * 6 // 10]


BAD = [
    ("truncated JPEG", lambda im: _truncated_jpeg(im), "x.jpg", 422, "corrupt or truncated image (JPEG)"),
    ("zero bytes", lambda im: b"", "x.jpg", 422, "empty upload: expected an image file, got 0 bytes"),
    ("text named .jpg", lambda im: b"this is not a picture, just text\n" * 20, "x.jpg", 422, "not an image"),
    ("random bytes", lambda im: np.random.default_rng(0).bytes(5000), "x.png", 422, "not an image"),
    ("corrupt PNG data", lambda im: encode(im, "PNG")[:60] + b"\x00" * 400 + encode(im, "PNG")[460:], "x.png",
     422, "corrupt"),
    ("30000x30000 PNG bomb", lambda im: png_header_only(30000, 30000), "bomb.png", 413, "image too large"),
    ("7000x7000 PNG, over the pixel limit", lambda im: png_header_only(7000, 7000), "big.png", 413,
     "image too large: expected at most 40000000 pixels, got 7000x7000 = 49000000"),
    ("ICO", lambda im: encode(im.resize((32, 32)), "ICO"), "x.ico", 415,
     "unsupported image format: expected one of BMP, GIF, JPEG, PNG, TIFF, WEBP, got ICO"),
    ("PDF", lambda im: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "x.pdf", 415, "got PDF"),
    ("SVG", lambda im: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "x.svg", 415, "got SVG"),
    ("over the byte limit", lambda im: encode(Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)), "PNG"), "noise.png", 413,
     "upload too large: expected at most 200000 bytes"),
]


@pytest.mark.parametrize("what,make,name,status,detail", BAD, ids=[b[0] for b in BAD])
def test_bad_upload_is_refused_clearly_and_loses_nothing(client, first, sample_image, what, make, name, status,
                                                          detail):
    r = upload(client, make(sample_image), name)
    assert r.status_code == status, (what, r.text)
    assert detail in r.json()["detail"], r.json()
    still_fine(client, first)


def test_size_is_counted_while_streaming_not_from_content_length(client, first):
    def body():  # a chunked multipart body: no Content-Length at all
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
        yield b"Content-Type: image/png\r\n\r\n"
        for _ in range(40):
            yield b"\x00" * 10_000
        yield b"\r\n--XyZ--\r\n"
    r = client.post("/api/images", content=body(), headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]
    still_fine(client, first)


def test_other_parts_count_toward_the_body_limit(client, first, sample_image):
    r = client.post("/api/images", files={"file": ("a.png", encode(sample_image.resize((8, 8)), "PNG"), "image/png"),
                                          "junk": ("j.bin", b"\x00" * 1_400_000, "application/octet-stream")})
    assert r.status_code == 413 and r.json()["detail"].endswith("in the request body")
    still_fine(client, first)


def test_malformed_requests(client, first, sample_image):
    r = client.post("/api/images", files={"picture": ("a.png", encode(sample_image, "PNG"), "image/png")})
    assert r.status_code == 422 and r.json()["detail"] == "upload: expected a multipart field named 'file', got none"
    r = client.post("/api/images", json={"file": "abc"})
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"]
    still_fine(client, first)


def _modes(im: Image.Image):
    rgb = im.resize((64, 48))
    a16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    frames = [rgb, rgb.rotate(180)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return [
        ("CMYK JPEG", encode(rgb.convert("CMYK"), "JPEG"), "CMYK"),
        ("16-bit PNG", encode(Image.fromarray(a16), "PNG"), "I;16"),
        ("RGBA PNG", encode(rgb.convert("RGBA"), "PNG"), "RGBA"),
        ("LA PNG", encode(rgb.convert("LA"), "PNG"), "LA"),
        ("L JPEG", encode(rgb.convert("L"), "JPEG"), "L"),
        ("P PNG", encode(rgb.convert("P"), "PNG"), "P"),
        ("animated GIF", gif.getvalue(), "P"),
        ("WebP", encode(rgb, "WEBP"), "RGB"),
        ("BMP", encode(rgb, "BMP"), "RGB"),
        ("TIFF", encode(rgb, "TIFF"), "RGB"),
        ("1x1 PNG", encode(Image.new("RGB", (1, 1), (200, 30, 10)), "PNG"), "RGB"),
    ]


def test_every_mode_and_format_is_converted_not_refused(client, first, sample_image):
    for what, data, mode in _modes(sample_image):
        assert Image.open(io.BytesIO(data)).mode == mode, what  # the test makes what it says
        r = upload(client, data, "img")
        assert r.status_code == 201, (what, r.text)
        iid = r.json()["image_id"]
        p = client.get(f"/api/images/{iid}/predictions", params={"k": 10})
        assert p.status_code == 200, (what, p.text)
        assert sum(e["probability"] for e in p.json()["predictions"]) == pytest.approx(1.0, abs=1e-4)
        view = Image.open(io.BytesIO(client.get(f"/api/images/{iid}/input.png").content))
        assert view.size == (224, 224) and view.mode == "RGB", what
    gif = dict((w, d) for w, d, _ in _modes(sample_image))["animated GIF"]
    r = upload(client, gif, "anim.gif").json()
    assert (r["width"], r["height"]) == (64, 48)
    still_fine(client, first)


def test_store_is_atomic_and_survives_a_restart(settings, client, first, sample_image):
    iid, view = first
    store = settings.state_path() / "uploads"
    assert not list(store.rglob("*.tmp"))
    files = sorted(p.name for p in (store / iid[:2]).iterdir())
    assert files == [f"{iid}.json", f"{iid}.png"]
    assert (store / iid[:2] / f"{iid}.png").read_bytes() == encode(sample_image, "PNG")
    with TestClient(create_app(settings)) as again:  # a second server over the same data dir
        assert again.get(f"/api/images/{iid}").json() == {"image_id": iid, "width": 256, "height": 200}
        assert again.get(f"/api/images/{iid}/input.png").content == view
