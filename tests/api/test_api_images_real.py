"""The photos people really upload (issue 12): EXIF orientation, ICC profiles, long thin strips, and
no library error ever answered as a text/plain 500.

Oracles independent of the code under test:

* orientation: the stored pixels are made with numpy from the EXIF 2.3 definitions of the eight
  values ("the 0th row is the visual right-hand side, the 0th column the visual top", ...), not
  from Pillow's transpose table; the upright read must give back the picture exactly (PNG) or
  within JPEG's error;
* colour: a profile made from Pillow's own sRGB profile with the red and blue colorant tags
  exchanged describes "sRGB with R and B swapped", so converting it to sRGB must swap the
  channels; the result is also held against ``ImageCms.profileToProfile``; a grey profile written
  by hand with a pure gamma curve must give sRGB's encoding of (v/255)^gamma;
* thin strips: the view of a 1 x N strip depends only on rows near its centre, so the old way
  (resize the whole, then crop) on a 16-row piece is the oracle for the new way on the whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import asdict

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageCms

from deconvlab.api import Settings, create_app
from deconvlab.api.storage import ImageStore, StoredImage
from deconvlab.data import Split, decoded, inspect_image, load_rgb, open_image, resize_crop, to_rgb

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def settings(small_models_dir, tmp_path_factory):
    return Settings(models=str(small_models_dir), data_dir=str(tmp_path_factory.mktemp("state")), device="cpu",
                    frontend_dir=str(tmp_path_factory.mktemp("no-frontend")))


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def post(client, data: bytes, name: str = "photo.jpg"):
    return client.post("/api/images", files={"file": (name, data, "application/octet-stream")})


def view_of(client, iid: str) -> np.ndarray:
    r = client.get(f"/api/images/{iid}/input.png")
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------ orientation

def upright_picture() -> np.ndarray:
    """48 wide x 32 high, 8-px blocks of seeded colours (no symmetry), flat inside each block for JPEG."""
    blocks = np.random.default_rng(12).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)


def stored_for(u: np.ndarray, orientation: int) -> np.ndarray:
    """What a camera writes so that the picture ``u`` is seen upright under EXIF ``orientation``.

    EXIF 2.3, tag 0x0112: where the 0th row and the 0th column of the stored image are in the scene."""
    H, W = u.shape[:2]
    i, j = np.meshgrid(np.arange(W if orientation >= 5 else H), np.arange(H if orientation >= 5 else W),
                       indexing="ij")  # stored row i, stored column j
    src = {1: (i, j),                  # 0th row top, 0th column left
           2: (i, W - 1 - j),          # 0th row top, 0th column right
           3: (H - 1 - i, W - 1 - j),  # 0th row bottom, 0th column right
           4: (H - 1 - i, j),          # 0th row bottom, 0th column left
           5: (j, i),                  # 0th row left, 0th column top
           6: (j, W - 1 - i),          # 0th row right, 0th column top
           7: (H - 1 - j, W - 1 - i),  # 0th row right, 0th column bottom
           8: (H - 1 - j, i)}[orientation]  # 0th row left, 0th column bottom
    return np.ascontiguousarray(u[src])


def tagged(a: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    return encode(Image.fromarray(a), fmt, exif=exif, **kw)


def test_the_eight_stored_layouts_are_eight_different_pictures():
    u = upright_picture()
    layouts = {o: stored_for(u, o) for o in range(1, 9)}
    assert all(layouts[o].shape == ((48, 32, 3) if o >= 5 else (32, 48, 3)) for o in layouts)
    assert len({a.tobytes() for a in layouts.values()}) == 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_is_read_upright_by_every_reader(orientation, tmp_path):
    u = upright_picture()
    png, jpeg = tagged(stored_for(u, orientation), orientation, "PNG"), tagged(stored_for(u, orientation),
                                                                                  orientation, "JPEG")
    assert Image.open(io.BytesIO(png)).getexif()[0x0112] == orientation  # the test makes what it says
    np.testing.assert_array_equal(np.asarray(open_image(png)), u)
    got = np.asarray(open_image(jpeg), dtype=np.int16)
    assert got.shape == u.shape and np.abs(got - u).mean() < 2.0 and np.abs(got - u).max() <= 24
    with Image.open(io.BytesIO(jpeg)) as im:  # the upload's cheap reading of the same metadata
        assert inspect_image(im) == (48, 32)
    # the data set's readers: a path (load_rgb, decoded) and the top-k index's open-then-convert
    cls = tmp_path / "val" / "n01440764"
    cls.mkdir(parents=True)
    (cls / "a.png").write_bytes(png)
    np.testing.assert_array_equal(np.asarray(load_rgb(cls / "a.png")), u)
    with Image.open(cls / "a.png") as im:
        once = to_rgb(im)
    np.testing.assert_array_equal(np.asarray(once), u)
    np.testing.assert_array_equal(np.asarray(to_rgb(once)), u)  # reading again changes nothing
    split = Split(tmp_path, "val", ["n01440764"], ["val/n01440764/a.png"], [0])
    arr = decoded(split, 24, workers=1, progress=False, indices=[0])
    np.testing.assert_array_equal(arr[0], np.asarray(resize_crop(Image.fromarray(u), 24)))


def test_orientation_values_outside_the_eight_are_taken_as_stored():
    u = upright_picture()
    for value in (0, 9, 65535):
        png = tagged(u, value, "PNG")
        assert Image.open(io.BytesIO(png)).getexif()[0x0112] == value
        notes: list[str] = []
        np.testing.assert_array_equal(np.asarray(open_image(png, notes)), u)
        assert notes == []


@pytest.mark.parametrize("orientation", [3, 6, 7, 8])
def test_uploads_report_upright_sizes_and_views_and_keep_the_bytes(client, settings, small_net, orientation):
    u = upright_picture()
    jpeg = tagged(stored_for(u, orientation), orientation, "JPEG")
    r = post(client, jpeg)
    assert r.status_code == 201, r.text
    iid = r.json()["image_id"]
    assert (r.json()["width"], r.json()["height"]) == (48, 32)
    assert client.get(f"/api/images/{iid}").json() == {"image_id": iid, "width": 48, "height": 32}
    stored = settings.state_path() / "uploads" / iid[:2] / f"{iid}.jpg"
    assert stored.read_bytes() == jpeg
    want = np.asarray(resize_crop(Image.fromarray(u), 224), dtype=np.int16)
    assert np.abs(view_of(client, iid) - want).mean() < 2.0
    png = tagged(stored_for(u, orientation), orientation, "PNG")  # lossless: the model sees exactly u
    iid = post(client, png, "photo.png").json()["image_id"]
    np.testing.assert_array_equal(view_of(client, iid), want)
    got = client.get(f"/api/images/{iid}/predictions", params={"k": 10}).json()["predictions"]
    p = small_net.forward(small_net.preprocess(Image.fromarray(u))).probabilities()[0]
    assert {e["class_index"]: e["probability"] for e in got} == pytest.approx(
        {c: float(p[c]) for c in range(10)}, abs=1e-5)


# ------------------------------------------------------------------ colour profiles

def swapped_srgb_profile() -> bytes:
    """Pillow's sRGB profile with the rXYZ and bXYZ colorant tags (and rTRC, bTRC) exchanged."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack(">I", icc[128:132])
    entries = {bytes(icc[132 + 12 * k: 136 + 12 * k]): 132 + 12 * k for k in range(count)}
    for a, b in ((b"rXYZ", b"bXYZ"), (b"rTRC", b"bTRC")):
        ia, ib = entries[a] + 4, entries[b] + 4
        icc[ia:ia + 8], icc[ib:ib + 8] = icc[ib:ib + 8], icc[ia:ia + 8]
    return bytes(icc)


def colourful(w: int = 64, h: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx * yy) % 256], -1)
    return a.astype(np.uint8)


def test_an_embedded_profile_is_converted_to_srgb():
    u = colourful()
    icc = swapped_srgb_profile()
    assert ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() == "RGB"
    got = np.asarray(open_image(encode(Image.fromarray(u), "PNG", icc_profile=icc)), dtype=np.int16)
    assert np.abs(got - u[..., ::-1]).max() <= 2  # R and B exchanged: what the profile says
    assert np.abs(got - u).max() > 100  # ...and not read as sRGB
    theirs = ImageCms.profileToProfile(Image.fromarray(u), profile_of(icc), ImageCms.createProfile("sRGB"),
                                       outputMode="RGB")
    np.testing.assert_array_equal(got, np.asarray(theirs))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    same = np.asarray(open_image(encode(Image.fromarray(u), "PNG", icc_profile=srgb)), dtype=np.int16)
    assert np.abs(same - u).max() <= 1  # an sRGB profile leaves sRGB pixels as they are


def profile_of(icc: bytes) -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(io.BytesIO(icc))


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def grey_profile(gamma_u8f8: int = 0x0233) -> bytes:
    """A minimal ICC v2 display profile written by hand: GRAY data, XYZ PCS, D50 white, one gamma
    curve (kTRC, u8Fixed8: 0x0233 = 2.199), the tags LittleCMS needs (ICC.1:2001-04, sec. 6-7)."""
    text = b"grey gamma test\x00"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * (8 + 3 + 67)
    d50 = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + b"\0" * 4 + d50),
            (b"kTRC", b"curv" + b"\0" * 4 + struct.pack(">IH", 1, gamma_u8f8)),
            (b"cprt", b"text" + b"\0" * 4 + b"none\0")]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table, data = table + sig + struct.pack(">II", offset + len(data), len(body)), data + body
    header = (struct.pack(">I", offset + len(data)) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrGRAYXYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + d50 + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def test_a_grey_profile_is_converted_as_its_curve_says():
    """Grey v under a pure gamma g is luminance (v/255)^g; sRGB encodes that luminance with its own curve."""
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got = np.asarray(open_image(encode(Image.fromarray(v, "L"), "PNG", icc_profile=grey_profile())), dtype=np.int16)
    y = (v / 255.0) ** (0x0233 / 256)
    want = np.round(255 * np.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / 2.4) - 0.055)).astype(np.int16)
    assert got.shape == (16, 16, 3) and np.abs(got - want[..., None]).max() <= 1
    assert np.abs(got - v[..., None].astype(np.int16)).max() >= 5  # ...and not read as sRGB


def test_the_data_set_readers_warn_about_an_unusable_profile_and_read_srgb(tmp_path, caplog):
    u = colourful()
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.fromarray(u), "PNG", icc_profile=b"\x00" * 200))
    with caplog.at_level(logging.WARNING, logger="deconvlab.data"):
        got = load_rgb(path)
    np.testing.assert_array_equal(np.asarray(got), u)
    assert [r.getMessage() for r in caplog.records if r.name == "deconvlab.data"] == [
        "embedded ICC profile ignored (OSError: cannot open profile from string): the pixels are read as sRGB"]


def test_uploads_see_the_profile_and_ignore_an_unusable_one_with_a_logged_warning(client, caplog):
    u = colourful(96, 72)
    r = post(client, encode(Image.fromarray(u), "JPEG", icc_profile=swapped_srgb_profile(), quality=95,
                           subsampling=0))
    assert r.status_code == 201, r.text
    want = np.asarray(resize_crop(Image.fromarray(np.ascontiguousarray(u[..., ::-1])), 224), dtype=np.int16)
    assert np.abs(view_of(client, r.json()["image_id"]) - want).mean() < 3.0
    grey = Image.fromarray(u).convert("L")
    cases = [("garbage", encode(Image.fromarray(u), "PNG", icc_profile=b"not a profile" * 9), Image.fromarray(u),
              "OSError"),
             ("RGB profile on a grey PNG", encode(grey, "PNG", icc_profile=swapped_srgb_profile()), grey,
              "the profile is RGB, the image L")]
    for what, data, untagged, why in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="deconvlab.api"):
            r = post(client, data, "x.png")
        assert r.status_code == 201, (what, r.text)
        iid = r.json()["image_id"]
        msgs = [rec.getMessage() for rec in caplog.records if rec.name == "deconvlab.api"]
        assert any(m.startswith(f"image {iid}: embedded ICC profile ignored (") and why in m
                   and m.endswith("the pixels are read as sRGB") for m in msgs), (what, msgs)
        want = np.asarray(resize_crop(untagged.convert("RGB"), 224), dtype=np.int16)
        np.testing.assert_array_equal(view_of(client, iid), want)


# ------------------------------------------------------------------ long thin strips

def thin_png(n: int) -> bytes:
    """A valid 1-bit 1 x n PNG (alternate rows black and white), compressed as it streams: a few kB for any n."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    z, parts, rows = zlib.compressobj(9), [], b"\x00\x80\x00\x00" * (1 << 18)  # 2 rows per 4 bytes
    for start in range(0, n, 1 << 19):
        parts.append(z.compress(rows[:2 * min(1 << 19, n - start)]))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", 1, n, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


THIN = [2000, 16000, 200_000, 40_000_000]
ROUTES = [("GET", "input.png"), ("GET", "predictions"), ("GET", "layers/conv1"), ("GET", "layers/conv2/units/3"),
          ("GET", "layers/conv2/units/3/map.png"), ("GET", "layers/conv2/units/3/projection"), ("POST", "occlusion")]


def ask(client, iid: str, method: str, route: str):
    url = f"/api/images/{iid}/{route}"
    if method == "POST":
        return client.post(url, json={"size": 112, "stride": 112, "layer": "conv5"})
    return client.get(url)


def test_resize_crop_costs_what_its_output_costs():
    """In a fresh process (so its peak memory means something): 1 x N strips, N up to 40 M."""
    code = """if True:
        import json, re, sys, time
        from PIL import Image
        from deconvlab.data import resize_crop

        def peak_kib():  # this process's own high-water mark (ru_maxrss would start at pytest's)
            with open("/proc/self/status") as f:
                return int(re.search(r"VmHWM:\\s+(\\d+)", f.read()).group(1))

        for n in (2000, 16000, 1_000_000, 40_000_000):
            im = Image.new("L", (1, n), 200)
            before = peak_kib()
            t = time.perf_counter()
            v = resize_crop(im, 224)
            dt = time.perf_counter() - t
            grew = peak_kib() - before
            print(json.dumps({"n": n, "s": dt, "kib": grew, "size": list(v.size)}), flush=True)
            if grew > 32 * 1024 or dt > 0.5:
                sys.exit(1)
    """
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert p.returncode == 0 and len(rows) == 4, (p.stdout, p.stderr[-2000:])
    assert all(r["size"] == [224, 224] for r in rows)


def test_thin_strips_are_refused_from_the_header_and_never_a_5xx(client, settings):
    for n in THIN:
        data = thin_png(n)
        t = time.perf_counter()
        r = post(client, data, "strip.png")
        assert time.perf_counter() - t < 2.0, n
        assert r.status_code == 422, (n, r.text)
        assert r.json()["detail"] == ("image shape: expected the longer side at most 100 times the shorter "
                                      f"(DECONVLAB_MAX_ASPECT), got 1x{n}")
    # the same strips stored by a server that had no such limit: every route refuses them too, undecoded
    store = ImageStore(settings.state_path() / "uploads", settings.max_pixels)
    for n in THIN:
        data = thin_png(n)
        rec = StoredImage(hashlib.sha256(data).hexdigest()[:24], 1, n, "PNG", len(data))
        store.path(rec).parent.mkdir(parents=True, exist_ok=True)
        store.path(rec).write_bytes(data)
        store.path(rec).with_suffix(".json").write_text(json.dumps(asdict(rec)))
        assert client.get(f"/api/images/{rec.image_id}").status_code == 200
        for method, route in ROUTES:
            t = time.perf_counter()
            r = ask(client, rec.image_id, method, route)
            assert time.perf_counter() - t < 2.0, (n, route)
            assert r.status_code == 422 and "DECONVLAB_MAX_ASPECT" in r.json()["detail"], (n, route, r.text)


def old_view(im: Image.Image, size: int) -> Image.Image:
    """The view as it used to be made: resize the whole image, then crop (fine for a few rows)."""
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    whole = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return whole.crop((left, top, left + size, top + size))


def test_thin_strips_within_a_looser_limit_get_correct_answers_fast(small_models_dir, tmp_path, small_net):
    loose = Settings(models=str(small_models_dir), data_dir=str(tmp_path), device="cpu", max_aspect=1e9,
                     frontend_dir=str(tmp_path / "none"))
    with TestClient(create_app(loose)) as c:
        for n in (2000, 16000):
            column = np.random.default_rng(n).integers(0, 256, (n, 1, 3), dtype=np.uint8)
            strip = Image.fromarray(column)
            r = post(c, encode(strip, "PNG"), "strip.png")
            assert r.status_code == 201 and (r.json()["width"], r.json()["height"]) == (1, n), r.text
            iid = r.json()["image_id"]
            piece = strip.crop((0, n // 2 - 8, 1, n // 2 + 8))  # the rows the centre crop can see
            want = np.asarray(old_view(piece, 224), dtype=np.int16)
            assert np.abs(view_of(c, iid) - want).max() <= 1, n
            for method, route in ROUTES:
                t = time.perf_counter()
                a = ask(c, iid, method, route)
                assert a.status_code == 200, (n, route, a.text)
                assert time.perf_counter() - t < 5.0, (n, route)
            got = c.get(f"/api/images/{iid}/predictions", params={"k": 10}).json()["predictions"]
            p = small_net.forward(small_net.preprocess(Image.fromarray(want.astype(np.uint8)))).probabilities()[0]
            assert {e["class_index"]: e["probability"] for e in got} == pytest.approx(
                {k: float(p[k]) for k in range(10)}, abs=2e-3)


# ------------------------------------------------------------------ unexpected errors

ERROR_ID = re.compile(r"^[0-9a-f]{12}$")


def assert_json_500(r, caplog, kind: str):
    assert r.status_code == 500 and r.headers["content-type"] == "application/json", (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"detail", "error_id"} and ERROR_ID.match(body["error_id"]), body
    assert f"({kind})" in body["detail"] and body["error_id"] in body["detail"]
    logged = [rec for rec in caplog.records if rec.name == "deconvlab.api" and body["error_id"] in rec.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR and logged[0].exc_info, caplog.records
    assert logged[0].exc_info[0].__name__ == kind


def test_an_unexpected_error_is_a_json_500_with_an_id_the_log_shows(client, monkeypatch, caplog):
    from deconvlab import data
    from deconvlab.api import storage
    from deconvlab.net import Net

    iid = post(client, encode(Image.fromarray(colourful(40, 30)), "PNG"), "e.png").json()["image_id"]

    def overflow(*a, **k):
        raise OverflowError("Python int too large to convert to C int")

    caplog.set_level(logging.ERROR, logger="deconvlab.api")
    monkeypatch.setattr(Net, "forward", overflow)  # on the runner's thread, awaited by the route
    assert_json_500(client.get(f"/api/images/{iid}/predictions"), caplog, "OverflowError")
    monkeypatch.setattr(data, "resize_crop", lambda *a, **k: 1 / 0)
    assert_json_500(client.get(f"/api/images/{iid}/input.png"), caplog, "ZeroDivisionError")
    monkeypatch.setattr(storage.ImageStore, "get", lambda *a, **k: {}["missing"])  # in a dependency
    assert_json_500(client.get(f"/api/images/{iid}"), caplog, "KeyError")
    monkeypatch.undo()
    assert client.get(f"/api/images/{iid}").status_code == 200  # and the server carries on
    assert client.get(f"/api/images/{iid}/predictions").status_code == 200
