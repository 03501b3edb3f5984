"""One writer for the paper's analyses: a figure, its numbers and (for the tables) Markdown.

Each analysis of the paper ends in a figure and the numbers behind it; the
trained comparisons also end in a table:

=======================================  ========================  =======================  ================
analysis                                 figure (PNG)              numbers (JSON)           table (Markdown)
=======================================  ========================  =======================  ================
feature evolution (Fig. 4)               ``evolution.png``         ``evolution.json``       --
invariance (Fig. 5)                      ``invariance.png``        ``invariance.json``      --
architecture ablation (Table 3, Fig. 6)  ``ablation_filters.png``  ``ablation.json``        ``ablation.md``
correspondence (Table 1, Fig. 8)         ``correspondence.png``    ``correspondence.json``  --
transfer, few images (Table 4)           ``transfer.png``          ``transfer.json``        ``transfer.md``
=======================================  ========================  =======================  ================

(``ablation_filters.png`` only when a first-layer variant was trained.)

``write_report`` renders everything in memory first (the figure as PNG bytes)
and only then writes each file through ``_util.atomic_write`` (a temp file
beside it, moved into place), so a reader never sees a half-written file, and
a figure that fails to render leaves the previous report untouched instead of
a new JSON beside an old figure.

=====================================  ==============================================
the figure is                          how it is written
=====================================  ==============================================
a PIL image (``Image.save``)           PNG, as it is
a matplotlib ``Figure`` (``savefig``)  PNG at ``dpi``
``None``                               no figure; an existing one is left as it is
anything else                          ``TypeError``: expected a PIL image, a
                                       matplotlib Figure or None
=====================================  ==============================================
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from .._util import atomic_write


def _png(figure, dpi: int) -> bytes:
    """``figure`` (a matplotlib Figure or a PIL image) as PNG bytes."""
    buf = io.BytesIO()
    if hasattr(figure, "savefig"):  # a matplotlib Figure (closed ones still save)
        figure.savefig(buf, format="png", dpi=dpi)
    elif hasattr(figure, "save") and hasattr(figure, "mode"):  # a PIL image
        figure.save(buf, format="PNG")
    else:
        raise TypeError(f"figure: expected a PIL image, a matplotlib Figure or None, got {type(figure).__name__}")
    return buf.getvalue()


def write_report(out_dir: str | Path, name: str, figure, data: dict, table: str | None = None, *,
                 figure_name: str | None = None, dpi: int = 100) -> dict[str, Path]:
    """Write ``<name>.json`` (``data``), ``<name>.md`` (``table``, if given) and the figure
    (``<figure_name or name>.png``, if ``figure`` is not None) into ``out_dir``, atomically.

    ``data`` is written as ``json.dumps(data, indent=2)`` and a newline; ``table`` as it is.
    Returns the paths written: ``{"json": ..., "table": ..., "figure": ...}`` (those given).
    """
    out = Path(out_dir)
    contents = {"json": (f"{name}.json", (json.dumps(data, indent=2) + "\n").encode())}
    if table is not None:
        contents["table"] = (f"{name}.md", table.encode())
    if figure is not None:
        contents["figure"] = (f"{figure_name or name}.png", _png(figure, dpi))
    out.mkdir(parents=True, exist_ok=True)  # everything rendered: only now touch the folder
    paths = {}
    for key, (file_name, body) in contents.items():
        paths[key] = atomic_write(out / file_name, lambda f, body=body: f.write(body))
    return paths
