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

``write_report`` renders every file into a temporary file next to its target
first and only then moves them into place (``os.replace``), so a reader never
sees a half-written file, and a figure that fails to render leaves the previous
report untouched instead of a new JSON beside an old figure.

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

import json
import os
from pathlib import Path
from typing import Callable


def _save_figure(figure, path: Path, dpi: int) -> None:
    if hasattr(figure, "savefig"):  # a matplotlib Figure (closed ones still save)
        figure.savefig(path, format="png", dpi=dpi)
    elif hasattr(figure, "save") and hasattr(figure, "mode"):  # a PIL image
        figure.save(path, format="PNG")
    else:
        raise TypeError(f"figure: expected a PIL image, a matplotlib Figure or None, got {type(figure).__name__}")


def _write_text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


def _replace_all(writers: dict[Path, Callable[[Path], None]]) -> None:
    """Run each ``writer(tmp)`` into a temporary file beside its target, then move all into place."""
    done: dict[Path, Path] = {}
    try:
        for target, write in writers.items():
            done[target] = tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            write(tmp)
        for target, tmp in done.items():
            os.replace(tmp, target)
    finally:
        for tmp in done.values():
            tmp.unlink(missing_ok=True)


def write_report(out_dir: str | Path, name: str, figure, data: dict, table: str | None = None, *,
                 figure_name: str | None = None, dpi: int = 100) -> dict[str, Path]:
    """Write ``<name>.json`` (``data``), ``<name>.md`` (``table``, if given) and the figure
    (``<figure_name or name>.png``, if ``figure`` is not None) into ``out_dir``, atomically.

    ``data`` is written as ``json.dumps(data, indent=2)`` and a newline; ``table`` as it is.
    Returns the paths written: ``{"json": ..., "table": ..., "figure": ...}`` (those given).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json"}
    writers = {paths["json"]: _write_text(json.dumps(data, indent=2) + "\n")}
    if table is not None:
        paths["table"] = out / f"{name}.md"
        writers[paths["table"]] = _write_text(table)
    if figure is not None:
        paths["figure"] = out / f"{figure_name or name}.png"
        writers[paths["figure"]] = lambda path: _save_figure(figure, path, dpi)
    _replace_all(writers)
    return paths
