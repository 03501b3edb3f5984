"""The Imagenette download path, driven against a local HTTP server serving an archive the test builds."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deconvlab import data


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one in-memory file, honouring ``Range: bytes=N-`` like S3 does."""

    payload = b""
    ranges_seen: list = []
    cut_after: int | None = None  # send only this many bytes, then drop the connection

    def do_GET(self):  # noqa: N802
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            type(self).ranges_seen.append(start)
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def make_archive(stem: str = "imagenette2-320") -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for split in ("train", "val"):
            for wnid in ("n01440764", "n02102040"):
                for i in range(3):
                    im = Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))
                    b = io.BytesIO()
                    im.save(b, "JPEG")
                    info = tarfile.TarInfo(f"{stem}/{split}/{wnid}/img{i}.JPEG")
                    info.size = len(b.getvalue())
                    tf.addfile(info, io.BytesIO(b.getvalue()))
    return buf.getvalue()


@pytest.fixture()
def server():
    payload = make_archive()

    class H(RangeHandler):
        pass

    H.payload, H.ranges_seen, H.cut_after = payload, [], None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield H, f"http://127.0.0.1:{srv.server_address[1]}/imagenette2-320.tgz"
    srv.shutdown()


def test_fetch_downloads_checks_and_unpacks(server, tmp_path):
    h, url = server
    md5 = hashlib.md5(h.payload).hexdigest()
    root = data.fetch_imagenette(cache=tmp_path, url=url, checksum=f"md5:{md5}", progress=False)
    assert root == tmp_path / "imagenette2-320"
    split = data.list_split(root, "train")
    assert split.class_ids == ["n01440764", "n02102040"] and len(split) == 6
    assert split.labels == ["tench", "English springer"]
    # a second call finds the finished copy and downloads nothing
    h.payload = b"garbage"
    assert data.fetch_imagenette(cache=tmp_path, url=url, checksum=f"md5:{md5}", progress=False) == root


def test_broken_download_resumes_with_a_range_request(server, tmp_path):
    h, url = server
    full = h.payload
    h.cut_after = 1000
    with pytest.raises(ConnectionError, match="broke off at 1000 of [0-9]+ bytes; run again to resume"):
        data.download(url, tmp_path / "a.tgz", progress=False)
    part = tmp_path / "a.tgz.part"
    assert part.is_file() and 0 < part.stat().st_size < len(full)
    have = part.stat().st_size
    h.cut_after = None
    sha = hashlib.sha256(full).hexdigest()
    out = data.download(url, tmp_path / "a.tgz", checksum=f"sha256:{sha}", progress=False)
    assert h.ranges_seen == [have]
    assert out.read_bytes() == full and not part.exists()


def test_checksum_mismatch_is_refused_and_the_partial_file_removed(server, tmp_path):
    _, url = server
    with pytest.raises(ValueError, match="checksum mismatch .* expected sha256 0+, got [0-9a-f]{64}"):
        data.download(url, tmp_path / "a.tgz", checksum="sha256:" + "0" * 64, progress=False)
    assert not (tmp_path / "a.tgz").exists() and not (tmp_path / "a.tgz.part").exists()


def test_data_root_prefers_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DECONVLAB_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    monkeypatch.setenv("DECONVLAB_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="DECONVLAB_DATA points to .*missing, which is not a folder"):
        data.data_root()


def test_list_split_names_a_missing_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'val' folder in data set"):
        data.list_split(tmp_path, "val")


def test_decoded_subset_matches_the_cached_whole(tmp_path, monkeypatch, server):
    h, url = server
    monkeypatch.setenv("DECONVLAB_CACHE", str(tmp_path / "cache"))
    root = data.fetch_imagenette(cache=tmp_path, url=url, checksum=None, progress=False)
    split = data.list_split(root, "val")
    whole = data.decoded(split, 32, progress=False)
    assert whole.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(data.decoded(split, 32, indices=[4, 1], progress=False), whole[[4, 1]])
    # cached: the second call memory-maps the same array
    again = data.decoded(split, 32, progress=False)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, whole)
