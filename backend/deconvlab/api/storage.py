"""Uploaded images: checked, then stored on disk under their content hash.

``check_image(data)`` decides whether bytes are an image the server takes, in
this order, each failure with its own exception (``errors.py`` turns them into
status codes):

1. zero bytes: ``CorruptImage`` (422);
2. the format, read from the header: outside the allow-list (JPEG, PNG, WebP,
   BMP, GIF, TIFF) -> ``UnsupportedFormat`` (415); not an image at all
   (text named .jpg, random bytes) -> ``CorruptImage`` (422);
3. width x height from the header, before any pixel is decoded, against the
   pixel limit (decompression bombs) -> ``TooLarge`` (413);
4. the longer side over ``max_aspect`` times the shorter (a 1 x 40,000,000
   PNG is under the pixel limit) -> ``BadShape`` (422), also from the header;
5. a full decode of the first frame (GIF: the first frame; TIFF: the first
   page); truncated or corrupt data -> ``CorruptImage`` (422).

The width and height recorded are the upright ones, as ``deconvlab.data``'s
reader will see the image (``inspect_image``: from the EXIF orientation,
without turning a pixel); the bytes stored are the uploaded ones, untouched.
What the reader will have to ignore (an unusable ICC profile, an unreadable
EXIF block) is logged as a warning naming the image id and kept in the
record's ``notes``; the upload still succeeds. Every later read is
``open_image`` (``ImageStore.load``): orientation, sRGB, RGB.
``ImageStore.load`` checks the shape again, so an image stored under a looser
limit (an older server) is refused with the same 422, never decoded.

``ImageStore`` keeps the accepted bytes as ``<root>/<id[:2]>/<id>.<ext>`` with
a ``<id>.json`` beside them (width, height, format, bytes), each written to a
temporary file and renamed, the JSON last, so a crash never leaves a half
image that looks complete. The id is the first 24 hex digits of the sha256 of
the bytes: the same bytes always get the same id, and the store survives a
restart because it is only files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}
ID_LENGTH = 24
_ID_RE = re.compile(rf"^[0-9a-f]{{{ID_LENGTH}}}$")

log = logging.getLogger("deconvlab.api")

# signatures of common formats PIL does not identify but that are images all the same (-> 415, not 422)
_OTHER_IMAGE_SIGNATURES = [
    (b"%PDF", "PDF"), (b"<svg", "SVG"), (b"<?xml", "SVG/XML"), (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
]


class UploadError(Exception):
    """Base class: an upload the server refuses; ``str(e)`` is the client's message."""


class CorruptImage(UploadError):
    pass


class UnsupportedFormat(UploadError):
    pass


class TooLarge(UploadError):
    pass


class BadShape(UploadError):
    """Width and height too far apart (``max_aspect``)."""


@dataclass
class StoredImage:
    image_id: str
    width: int
    height: int
    format: str  # PIL's name, one of ALLOWED_FORMATS
    bytes: int
    notes: list[str] = field(default_factory=list)  # what the reader ignored (open_image's notes)

    def public(self) -> dict:
        return {"image_id": self.image_id, "width": self.width, "height": self.height}


def _sniff_other(data: bytes) -> str | None:
    head = data[:64]
    for sig, name in _OTHER_IMAGE_SIGNATURES:
        if head.lstrip().startswith(sig):
            return name
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"):
        return "HEIF/AVIF"
    return None


def check_shape(w: int, h: int, max_aspect: float | None) -> None:
    """``BadShape`` when the longer side is over ``max_aspect`` times the shorter (None: no limit)."""
    if max_aspect is not None and max(w, h) > max_aspect * min(w, h):
        raise BadShape(f"image shape: expected the longer side at most {max_aspect:g} times the shorter "
                       f"(DECONVLAB_MAX_ASPECT), got {w}x{h}")


def check_image(data: bytes, max_pixels: int, max_aspect: float | None = None,
                notes: list[str] | None = None) -> tuple[str, int, int]:
    """(format, upright width, upright height) of acceptable image bytes; raises an ``UploadError`` otherwise.

    ``notes`` collects what the reader will ignore (see ``deconvlab.data.to_rgb``).
    """
    from ..data import inspect_image

    if len(data) == 0:
        raise CorruptImage("empty upload: expected an image file, got 0 bytes")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise TooLarge(f"image too large: expected at most {max_pixels} pixels ({e})") from None
    except UnidentifiedImageError:
        other = _sniff_other(data)
        if other:
            raise UnsupportedFormat(f"unsupported image format: expected one of "
                                    f"{', '.join(sorted(ALLOWED_FORMATS))}, got {other}") from None
        raise CorruptImage(f"not an image: expected {', '.join(sorted(ALLOWED_FORMATS))} data, "
                           f"got {len(data)} bytes that no image decoder recognises") from None
    except Exception as e:  # a header so broken that opening fails
        raise CorruptImage(f"corrupt image: {type(e).__name__}: {e}") from None
    with im:
        fmt = im.format or "?"
        if fmt not in ALLOWED_FORMATS:
            raise UnsupportedFormat(f"unsupported image format: expected one of "
                                    f"{', '.join(sorted(ALLOWED_FORMATS))}, got {fmt}")
        w, h = im.size
        if w < 1 or h < 1:
            raise CorruptImage(f"corrupt image: expected a positive size, got {w}x{h}")
        if w * h > max_pixels:
            raise TooLarge(f"image too large: expected at most {max_pixels} pixels, "
                           f"got {w}x{h} = {w * h}")
        check_shape(w, h, max_aspect)
        try:
            im.seek(0)
            im.load()
        except Image.DecompressionBombError as e:
            raise TooLarge(f"image too large: expected at most {max_pixels} pixels ({e})") from None
        except Exception as e:  # truncated or corrupt pixel data
            raise CorruptImage(f"corrupt or truncated image ({fmt}): {e}") from None
        w, h = inspect_image(im, notes)
    return fmt, w, h


def decode(data: bytes) -> Image.Image:
    """Stored (already checked) bytes as ``open_image`` reads them: upright, sRGB, RGB."""
    from ..data import open_image

    return open_image(data)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class ImageStore:
    """Content-addressed image files under ``root`` (see the module doc)."""

    def __init__(self, root: str | Path, max_pixels: int, max_aspect: float | None = None):
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.max_aspect = max_aspect
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def valid_id(image_id: str) -> bool:
        return bool(_ID_RE.match(image_id))

    def _meta_path(self, image_id: str) -> Path:
        return self.root / image_id[:2] / f"{image_id}.json"

    def put(self, data: bytes) -> tuple[StoredImage, bool]:
        """Check and store ``data``; (its record, True when it was new)."""
        notes: list[str] = []
        fmt, w, h = check_image(data, self.max_pixels, self.max_aspect, notes)
        image_id = hashlib.sha256(data).hexdigest()[:ID_LENGTH]
        existing = self.get(image_id)
        if existing is not None:
            return existing, False
        for note in notes:
            log.warning("image %s: %s", image_id, note)
        rec = StoredImage(image_id, w, h, fmt, len(data), notes)
        _atomic_write(self.root / image_id[:2] / f"{image_id}.{ALLOWED_FORMATS[fmt]}", data)
        _atomic_write(self._meta_path(image_id), json.dumps(asdict(rec)).encode())
        return rec, True

    def get(self, image_id: str) -> StoredImage | None:
        """The record of a stored image, or None (also for a malformed id)."""
        if not self.valid_id(image_id):
            return None
        p = self._meta_path(image_id)
        try:
            return StoredImage(**json.loads(p.read_text()))
        except FileNotFoundError:
            return None

    def path(self, rec: StoredImage) -> Path:
        return self.root / rec.image_id[:2] / f"{rec.image_id}.{ALLOWED_FORMATS[rec.format]}"

    def read(self, rec: StoredImage) -> bytes:
        return self.path(rec).read_bytes()

    def load(self, rec: StoredImage) -> Image.Image:
        """The image as the model sees it before resizing; ``BadShape`` (before decoding) beyond ``max_aspect``."""
        check_shape(rec.width, rec.height, self.max_aspect)
        return decode(self.read(rec))
