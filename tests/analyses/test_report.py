"""write_report: the figure, JSON and Markdown of an analysis, written together or not at all."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deconvlab.analyses.report import write_report


def _mpl_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.0, 1.5))
    ax.plot([0, 1, 2], [2, 0, 1])
    plt.close(fig)  # the analyses hand over closed figures
    return fig


def test_writes_the_same_files_as_writing_each_by_hand(tmp_path):
    data = {"rows": [{"a": 1.5, "b": None}], "name": "x"}
    table = "| a |\n|---|\n| 1.5 |\n"
    fig = _mpl_figure()
    paths = write_report(tmp_path / "out", "thing", fig, data, table, dpi=70)
    assert paths == {"json": tmp_path / "out" / "thing.json", "table": tmp_path / "out" / "thing.md",
                     "figure": tmp_path / "out" / "thing.png"}
    assert paths["json"].read_text() == json.dumps(data, indent=2) + "\n"
    assert json.loads(paths["json"].read_text()) == data
    assert paths["table"].read_text() == table
    fig.savefig(tmp_path / "by_hand.png", dpi=70)  # the other route to the same picture
    with Image.open(paths["figure"]) as a, Image.open(tmp_path / "by_hand.png") as b:
        assert a.size == (140, 105) and np.array_equal(np.asarray(a), np.asarray(b))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thing.json", "thing.md", "thing.png"]


def test_a_pil_figure_under_its_own_name_and_no_table(tmp_path):
    im = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    paths = write_report(tmp_path, "abl", im, {"k": 1}, figure_name="abl_filters")
    assert set(paths) == {"json", "figure"} and paths["figure"].name == "abl_filters.png"
    with Image.open(paths["figure"]) as out:
        assert np.array_equal(np.asarray(out), np.asarray(im))
    assert not (tmp_path / "abl.md").exists()


def test_a_figure_that_fails_leaves_the_previous_report_whole(tmp_path):
    write_report(tmp_path, "r", Image.new("RGB", (3, 2), "red"), {"v": 1}, "old\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    class Broken:  # renders half a figure, then fails
        mode = "RGB"

        def save(self, fp, format=None):
            fp.write(b"half a png")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, "r", Broken(), {"v": 2}, "new\n")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no new JSON, no temp files
    with pytest.raises(TypeError, match="expected a PIL image, a matplotlib Figure or None, got int"):
        write_report(tmp_path, "r", 3, {"v": 3})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_no_figure_keeps_an_existing_one(tmp_path):
    write_report(tmp_path, "r", Image.new("RGB", (3, 2), "red"), {"v": 1})
    png = (tmp_path / "r.png").read_bytes()
    paths = write_report(tmp_path, "r", None, {"v": 2})
    assert "figure" not in paths and (tmp_path / "r.png").read_bytes() == png
    assert json.loads((tmp_path / "r.json").read_text()) == {"v": 2}
