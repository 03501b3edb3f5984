"""Data sets: ImageFolder listings, the Imagenette download, decoded-array caches.

Any ImageFolder tree works (``root/train/<class>/*``, ``root/val/<class>/*``).
The default data set is Imagenette; ``DECONVLAB_DATA`` names its folder, and
when it is unset and no copy is cached, ``data_root()`` downloads the upstream
archive into the cache (progress bar, checksum, resume of a broken download).

Training decodes every image once into a uint8 array (``decoded``), cached on
disk as ``.npy`` keyed by the listing's hash, because decoding JPEGs every epoch
costs a large share of an epoch on two cores.

Every image is read by ``open_image`` (a path, bytes or an open PIL image; the
server's uploads, the data sets, the top-k index and the CLI all go through it
or through ``to_rgb``), which applies, in this order:

==============  ==========================================================  ===============================
step            rule                                                        when the metadata is unusable
==============  ==========================================================  ===============================
1 orientation   EXIF Orientation 2..8 (mirror, rotate 90/180/270, transpose  orientation as stored; a note
                / transverse: ``ImageOps.exif_transpose``) before anything
                else; 1, no tag or a value outside 1..8: as stored
2 colour        an embedded ICC profile (RGB, GRAY or CMYK) converted to     pixels read as sRGB; a note
                sRGB by LittleCMS (``ImageCms``) at the profile's own
                rendering intent; no profile: the pixels are sRGB
3 mode          L, LA, RGBA, P, CMYK, I;16, I, F -> RGB; alpha composited    (never refused)
                on white; 16-bit scaled from 0..65535, I/F from their range
==============  ==========================================================  ===============================

"A note" is a sentence appended to the caller's ``notes`` list, or a warning
on the ``deconvlab.data`` logger when the caller passes none. The result has
no orientation tag and no profile left, so reading it again changes nothing.
``inspect_image`` is the cheap half: the upright size and the notes from the
metadata alone, without converting a pixel (what an upload is checked with).

``resize_crop`` is the model's view (shorter side to S, centre S x S crop),
computed crop first so its cost is bounded by S, not by the input's longer side.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageCms, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}

# fast.ai's Imagenette, 320 px version (github.com/fastai/imagenette, README).
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"
# Upstream publishes no sha256; this md5 is the one torchvision.datasets.Imagenette checks.
IMAGENETTE_CHECKSUM = "md5:3df6f0d01a2c9592104656642f5e78a3"

IMAGENETTE_LABELS = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def cache_dir() -> Path:
    """``$DECONVLAB_CACHE``, else ``~/.cache/deconvlab``."""
    return Path(os.environ.get("DECONVLAB_CACHE", Path.home() / ".cache" / "deconvlab"))


@dataclass
class Split:
    """One split of an ImageFolder tree: sorted files and their class indices."""

    root: Path  # the data set's root (parent of the split folder)
    name: str  # "train" or "val"
    class_ids: list[str]  # folder names, sorted; index = class index
    files: list[str]  # paths relative to root, sorted
    targets: list[int]  # class index per file

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> list[str]:
        return [IMAGENETTE_LABELS.get(c, c) for c in self.class_ids]

    def listing_hash(self) -> str:
        """sha256 of the listing (relative paths and sizes): changes when the data set does."""
        h = hashlib.sha256()
        for rel in self.files:
            h.update(rel.encode())
            h.update(str((self.root / rel).stat().st_size).encode())
        return h.hexdigest()

    def path(self, i: int) -> Path:
        return self.root / self.files[i]


def list_split(root: str | Path, split: str) -> Split:
    root = Path(root)
    d = root / split
    if not d.is_dir():
        raise FileNotFoundError(f"no {split!r} folder in data set {root} (expected {d}/<class>/<images>)")
    class_ids = sorted(p.name for p in d.iterdir() if p.is_dir())
    if not class_ids:
        raise FileNotFoundError(f"{d} holds no class folders")
    files, targets = [], []
    for ci, c in enumerate(class_ids):
        for f in sorted((d / c).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(str(f.relative_to(root)))
                targets.append(ci)
    return Split(root, split, class_ids, files, targets)


# ---------------------------------------------------------------- reading images

log = logging.getLogger("deconvlab.data")

# Bump when what an image decodes to changes (2: EXIF orientation and ICC profiles applied); part of
# the key of the decoded-array cache, so arrays decoded under an older rule are never reused.
DECODE_VERSION = 2

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image]

_ORIENTATION = 0x0112  # EXIF / TIFF tag 274
_PROFILE_SPACES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}  # ICC colour space -> the PIL mode it reads
_SRGB = ImageCms.createProfile("sRGB")


def open_image(source: ImageSource, notes: list[str] | None = None) -> Image.Image:
    """THE reader of images (uploads, data sets, the CLI): a path, encoded bytes or an open PIL
    image -> a new upright sRGB RGB image (the first frame of a GIF, the first page of a TIFF).

    Decoding errors propagate (``OSError``, ``SyntaxError``, ``Image.DecompressionBombError``);
    what ``to_rgb`` does after decoding never fails on the metadata (see there).
    """
    if isinstance(source, Image.Image):
        return to_rgb(source, notes)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with Image.open(fp) as im:
        im.seek(0)
        im.load()
        return to_rgb(im, notes)


def load_rgb(path: str | Path) -> Image.Image:
    """``open_image(path)``: the data-set code's name for it."""
    return open_image(path)


def to_rgb(im: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """A decoded PIL image -> a new upright sRGB RGB image, in the order of the table in the module doc:
    orientation, colour profile, mode.

    An unreadable EXIF block or an unusable ICC profile is never an error: that step is
    skipped (orientation as stored; pixels read as sRGB) and a sentence saying so is appended
    to ``notes``, or logged as a warning (logger ``deconvlab.data``) when ``notes`` is None.
    The result carries neither an Orientation tag nor a profile, so ``to_rgb`` of it is itself.
    """
    im.load()  # decoding errors are the caller's, never taken for a metadata problem below
    icc = im.info.get("icc_profile")
    up = _upright(im, notes)
    base = up if up is not im and up.mode == "RGB" else _flatten(up)  # a turned RGB image is a new one already
    out = _to_srgb(up, base, icc, notes) if icc else base
    out.info.pop("icc_profile", None)
    return out


def _note(notes: list[str] | None, message: str) -> None:
    if notes is None:
        log.warning(message)
    else:
        notes.append(message)


def _why(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 160 else text[:157] + "..."


def inspect_image(im: Image.Image, notes: list[str] | None = None) -> tuple[int, int]:
    """The (width, height) ``to_rgb(im)`` will have, from the metadata alone (no pixel converted),
    and into ``notes`` what it will have to ignore: the cheap half of ``to_rgb`` (uploads use it)."""
    w, h = im.size
    orientation = _orientation(im, notes)
    icc = im.info.get("icc_profile")
    if icc:
        _profile_transform(im, icc, notes)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _orientation(im: Image.Image, notes: list[str] | None) -> int:
    """The EXIF Orientation, 1..8; 1 for no tag, a value outside 1..8 or an unreadable EXIF block (noted)."""
    try:
        o = im.getexif().get(_ORIENTATION, 1)
    except Exception as e:  # noqa: BLE001 -- a broken EXIF block must not refuse the photo
        _note(notes, f"EXIF block unreadable ({_why(e)}): the orientation is ignored")
        return 1
    return o if isinstance(o, int) and 1 <= o <= 8 else 1


def _upright(im: Image.Image, notes: list[str] | None) -> Image.Image:
    """Orientation 2..8 applied (``ImageOps.exif_transpose``); 1: as stored."""
    if _orientation(im, notes) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 -- as for an unreadable block
        _note(notes, f"EXIF orientation not applied ({_why(e)}): the image is taken as stored")
        return im


def _reading_mode(im: Image.Image) -> str:
    """The PIL mode a profile for ``im`` must describe: CMYK, L (grey modes) or RGB (the rest)."""
    return "CMYK" if im.mode == "CMYK" else ("L" if _is_grey(im.mode) else "RGB")


def _profile_transform(im: Image.Image, icc: bytes, notes: list[str] | None):
    """``im``'s profile -> sRGB transform, or None (noted) when the profile cannot be used."""
    try:
        return _srgb_transform(bytes(icc), _reading_mode(im))
    except Exception as e:  # noqa: BLE001 -- by contract (api/README.md) an unusable profile is ignored
        _note(notes, f"embedded ICC profile ignored ({_why(e)}): the pixels are read as sRGB")
        return None


def _to_srgb(im: Image.Image, base: Image.Image, icc: bytes, notes: list[str] | None) -> Image.Image:
    """``base`` (``im`` flattened to RGB) converted from ``im``'s embedded profile to sRGB; ``base`` when unusable."""
    transform = _profile_transform(im, icc, notes)
    if transform is None:
        return base
    mode = _reading_mode(im)
    src = im if mode == "CMYK" else (base.convert("L") if mode == "L" else base)
    try:
        return ImageCms.applyTransform(src, transform)
    except Exception as e:  # noqa: BLE001 -- as for an unreadable profile
        _note(notes, f"embedded ICC profile ignored ({_why(e)}): the pixels are read as sRGB")
        return base


def _is_grey(mode: str) -> bool:
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


@functools.lru_cache(maxsize=16)
def _srgb_transform(icc: bytes, mode: str) -> "ImageCms.ImageCmsTransform":
    """LittleCMS transform from the profile ``icc`` (read by ``mode`` images) to sRGB, at the profile's own intent."""
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    space = src.profile.xcolor_space.strip()
    want = _PROFILE_SPACES.get(space)
    if want is None:
        raise ValueError(f"colour space: expected one of {', '.join(_PROFILE_SPACES)}, got {space!r}")
    if want != mode:
        raise ValueError(f"the profile is {space}, the image {mode}")
    header = src.profile.rendering_intent  # 0..3 by ICC.1; anything else is read as perceptual (0)
    intent = ImageCms.Intent(header if header in (0, 1, 2, 3) else 0)
    return ImageCms.buildTransform(src, _SRGB, mode, "RGB", renderingIntent=intent)


def _flatten(im: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, RGBA, P, CMYK, I;16, I, F, ...) -> a new RGB image; alpha composited on white."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        if im.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.clip((a - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    return im.convert("RGB")


def resize_crop(im: Image.Image, size: int) -> Image.Image:
    """The model's view: the shorter side resized to ``size`` (bilinear, antialiased), then the
    centre ``size`` x ``size`` crop.

    Computed crop first: the crop's box is mapped back into ``im`` and only that box is
    resampled (``Image.resize(box=...)``, the same filter taps as resizing everything), so
    the work and memory are bounded by the output and the box, never by the resized whole
    (a 1 x 16000 image would otherwise be resized to 224 x 3,584,000 first).
    """
    w, h = im.size
    if w < 1 or h < 1 or size < 1:
        raise ValueError(f"resize_crop: expected a non-empty image and size >= 1, got {w}x{h} and {size}")
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))  # the resized whole (never made)
    left, top = (nw - size) // 2, (nh - size) // 2
    if (nw, nh) == (w, h):
        return im.crop((left, top, left + size, top + size))
    box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
    return im.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)


def _decode_one(args) -> np.ndarray:
    path, size = args
    return np.asarray(resize_crop(load_rgb(path), size), dtype=np.uint8)


def decoded(split: Split, size: int, workers: int | None = None, progress: bool = True,
            indices=None) -> np.ndarray:
    """All images of ``split`` as one uint8 array (N, size, size, 3), cached on disk.

    With ``indices``, only those images, in that order, and nothing is cached.
    """
    if indices is not None:
        return _decode_many([(split.path(int(i)), size) for i in indices], size, workers, progress,
                            f"decode {split.name} @{size}px")
    key = hashlib.sha256(f"{split.root.resolve()}|{split.name}|{size}|{split.listing_hash()}|v{DECODE_VERSION}"
                         .encode()).hexdigest()[:16]
    path = cache_dir() / "arrays" / f"{split.name}-{size}-{key}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    out = _decode_many([(split.path(i), size) for i in range(len(split))], size, workers, progress,
                       f"decode {split.name} @{size}px")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def _decode_many(jobs: list, size: int, workers: int | None, progress: bool, desc: str) -> np.ndarray:
    from tqdm import tqdm

    out = np.empty((len(jobs), size, size, 3), dtype=np.uint8)
    workers = workers or min(4, os.cpu_count() or 1)
    ex = ProcessPoolExecutor(workers) if len(jobs) >= 64 and workers > 1 else None
    try:
        it = ex.map(_decode_one, jobs, chunksize=32) if ex else map(_decode_one, jobs)
        for i, a in enumerate(tqdm(it, total=len(jobs), desc=desc, unit="img", disable=not progress)):
            out[i] = a
    finally:
        if ex:
            ex.shutdown()
    return out


# ---------------------------------------------------------------- download

def download(url: str, dest: Path, checksum: str | None = None, progress: bool = True,
             chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    ``checksum`` is ``"<algorithm>:<hex digest>"`` (``sha256:...``, ``md5:...``);
    when given, the finished file must match it, or the partial file is deleted
    and ``ValueError`` names both digests.
    """
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # server ignored the range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                disable=not progress) as bar:
            while True:
                block = resp.read(chunk)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:  # the connection dropped: keep the part for a resume
        raise ConnectionError(f"download of {url} broke off at {got} of {total} bytes; "
                              f"run again to resume from {part}")
    if checksum is not None:
        algo, _, want = checksum.partition(":")
        got = file_digest(part, algo)
        if got != want.lower():
            part.unlink()
            raise ValueError(f"checksum mismatch for {url}: expected {algo} {want}, got {got}")
    os.replace(part, dest)
    return dest


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    if algorithm not in hashlib.algorithms_available:
        raise ValueError(f"checksum algorithm: expected one of sha256, md5, ..., got {algorithm!r}")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_imagenette(cache: Path | None = None, url: str = IMAGENETTE_URL,
                     checksum: str | None = IMAGENETTE_CHECKSUM, progress: bool = True) -> Path:
    """Download and unpack Imagenette into the cache once; return the data root (with train/ and val/)."""
    cache = cache or cache_dir()
    name = url.rsplit("/", 1)[-1]
    stem = name.split(".")[0]
    root = cache / stem
    done = root / ".complete"
    if done.is_file():
        return root
    archive = download(url, cache / name, checksum=checksum, progress=progress)
    digest = file_digest(archive)
    tmp = cache / (stem + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive) as tf:
        tf.extractall(tmp, filter="data")
    inner = tmp / stem if (tmp / stem).is_dir() else tmp
    shutil.rmtree(root, ignore_errors=True)
    os.replace(inner, root)
    shutil.rmtree(tmp, ignore_errors=True)
    (root / ".complete").write_text(json.dumps({"url": url, "sha256": digest}))
    return root


def data_root(download_ok: bool = True) -> Path:
    """``$DECONVLAB_DATA`` when set, else a cached (or freshly downloaded) Imagenette."""
    env = os.environ.get("DECONVLAB_DATA")
    if env:
        p = Path(env)
        if not p.is_dir():
            raise FileNotFoundError(f"DECONVLAB_DATA points to {p}, which is not a folder")
        return p
    cached = cache_dir() / IMAGENETTE_URL.rsplit("/", 1)[-1].split(".")[0]
    if (cached / ".complete").is_file():
        return cached
    if not download_ok:
        raise FileNotFoundError("no data set: set DECONVLAB_DATA to an ImageFolder root")
    try:
        return fetch_imagenette()
    except OSError as e:  # URLError, connection reset, disk full: say what to do instead
        raise FileNotFoundError(f"no data set: DECONVLAB_DATA is unset and downloading {IMAGENETTE_URL} "
                                f"failed ({e}); set DECONVLAB_DATA to an ImageFolder root") from e
