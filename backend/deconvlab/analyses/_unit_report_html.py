"""The HTML (and the one-picture summary) of a ``unit_report.UnitReport``.

===========================  ====================================================================
rule                         how
===========================  ====================================================================
self-contained               every image a ``data:image/png;base64`` URI; the CSS inline; no
                             script but the JSON data block; a Content-Security-Policy meta of
                             ``default-src 'none'; img-src data:; style-src 'unsafe-inline'`` so
                             a browser fetches nothing even if a string slipped through
accessible                   ``lang``, one ``h1``, an ``h2`` per section, ``figure`` +
                             ``figcaption``, alt text on every image, the outline of a receptive
                             field ``aria-hidden`` (its rows and columns are in the alt text)
machine-readable provenance  ``<script type="application/json" id="deconvlab-provenance">`` (with
                             ``</`` written ``<\\/``) and one ``<dd data-key=...>`` per field
sections                     ``<section data-section="top" data-state="present|absent">``; an
                             absent one says why in ``<p class="dl-absent">``
===========================  ====================================================================

Every text goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import json
from html.parser import HTMLParser

from PIL import Image, ImageDraw

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
.dl-report{font:15px/1.45 system-ui,sans-serif;color:#1a1a1a;background:#fff;max-width:1180px;margin:0 auto;
 padding:0 12px 24px}
.dl-report h1{font-size:1.5em;margin:.6em 0 .2em}.dl-report h2{font-size:1.2em;margin:1.2em 0 .3em;
 border-bottom:1px solid #ccc}
.dl-report .dl-figs{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.dl-report .dl-grid{display:grid;gap:6px}
.dl-report figure{margin:0}.dl-report figcaption{font-size:.85em;color:#444;max-width:240px}
.dl-report .dl-frame{position:relative;display:inline-block;line-height:0}
.dl-report img{image-rendering:pixelated;height:auto;border:1px solid #bbb}
.dl-report .dl-box{position:absolute;border:2px solid #ff2d55;box-sizing:border-box}
.dl-report .dl-absent{color:#6b4e00;background:#fff6d6;border-left:4px solid #d9a400;padding:4px 8px}
.dl-report .dl-note{color:#444}.dl-report ul.dl-legend{list-style:none;padding:0;margin:2px 0}
.dl-report .dl-swatch{display:inline-block;width:.9em;height:.9em;margin-right:4px;vertical-align:middle;
 border:1px solid #555}
.dl-report dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}
.dl-report dt{font-weight:600}.dl-report dd{margin:0;overflow-wrap:anywhere;font-family:ui-monospace,monospace}
"""

WIDTHS = {"input": 224, "projections": 224, "feature-map": 224, "top": 88, "evolution": 96, "occlusion": 224}

FIELDS = [  # (label, data-key, value of the provenance)
    ("Model", "model", lambda p: p["model"]["name"]),
    ("Architecture, engine", "arch", lambda p: f"{p['model']['arch']}, {p['model']['engine']}"),
    ("Weights sha256", "weights_sha256", lambda p: p["model"]["weights_sha256"]),
    ("Layer", "layer", lambda p: p["layer"]),
    ("Unit", "unit", lambda p: p["unit"]),
    ("Method", "method", lambda p: p["method"]),
    ("Seed", "seed", lambda p: p["seed"]),
    ("Position (y, x)", "position", lambda p: "none" if p["position"] is None else ", ".join(map(str, p["position"]))),
    ("Receptive field (t, l, b, r)", "box", lambda p: "none" if p["box"] is None else ", ".join(map(str, p["box"]))),
    ("Image sha256", "image_sha256", lambda p: p["image"]["sha256"]),
    ("Image sha256 of", "image_sha256_of", lambda p: p["image"]["sha256_of"]),
    ("deconvlab version", "deconvlab_version", lambda p: p["deconvlab_version"]),
    ("Date (UTC)", "date", lambda p: p["date"]),
]


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(f, width: int) -> str:
    w = width or f.image.width
    h = max(1, round(w * f.image.height / max(f.image.width, 1)))
    box = ""
    if f.box is not None:
        t, l, b, r = f.box
        W, H = f.image.width, f.image.height
        box = (f'<span class="dl-box" aria-hidden="true" style="top:{100 * t / H:.2f}%;left:{100 * l / W:.2f}%;'
               f'height:{100 * (b - t) / H:.2f}%;width:{100 * (r - l) / W:.2f}%"></span>')
    legend = ""
    if f.legend:
        legend = '<ul class="dl-legend">' + "".join(
            f'<li><span class="dl-swatch" style="background:{_e(c)}"></span>{_e(label)}</li>' for c, label in f.legend
        ) + "</ul>"
    caption = f"<strong>{_e(f.title)}</strong>" + (f"<br>{_e(f.caption)}" if f.caption else "") + legend
    return (f'<figure data-figure="{_e(f.key)}"><div class="dl-frame"><img src="{data_uri(f.png())}" '
            f'alt="{_e(f.alt)}" width="{w}" height="{h}">{box}</div><figcaption>{caption}</figcaption></figure>')


def _section(s) -> str:
    head = f'<section id="dl-{_e(s.key)}" data-section="{_e(s.key)}" data-state="{s.state}" ' \
           f'aria-labelledby="dl-{_e(s.key)}-h"><h2 id="dl-{_e(s.key)}-h">{_e(s.title)}</h2>'
    if s.absent is not None:
        return head + f'<p class="dl-absent">Absent from this report: {_e(s.absent)}.</p></section>'
    note = f'<p class="dl-note">{_e(s.note)}</p>' if s.note else ""
    width = WIDTHS.get(s.key, 0)
    figs = "".join(_figure(f, width) for f in s.figures)
    if s.columns:
        box = f'<div class="dl-grid" style="grid-template-columns:repeat({int(s.columns)},max-content)">{figs}</div>'
    else:
        box = f'<div class="dl-figs">{figs}</div>'
    return head + note + box + "</section>"


def _provenance(p: dict) -> str:
    rows = "".join(f'<dt>{_e(label)}</dt><dd data-key="{key}">{_e(get(p))}</dd>' for label, key, get in FIELDS)
    absent = [f"{k} ({v[len('absent: '):]})" for k, v in p["sections"].items() if v != "present"]
    rows += f'<dt>Sections absent</dt><dd data-key="absent">{_e("; ".join(absent) or "none")}</dd>'
    blob = json.dumps(p, indent=1, sort_keys=True).replace("</", "<\\/")
    return ('<section id="dl-provenance" data-section="provenance" data-state="present" '
            'aria-labelledby="dl-provenance-h"><h2 id="dl-provenance-h">Provenance</h2>'
            f'<dl>{rows}</dl><script type="application/json" id="deconvlab-provenance">{blob}</script></section>')


def fragment(report) -> str:
    """The page as one ``<div class="dl-report">`` with its own style (a notebook's ``_repr_html_``)."""
    p = report.provenance
    title = (f"{_e(p['model']['name'])}: {_e(p['layer'])} unit {_e(p['unit'])}")
    nav = "".join(f'<li><a href="#dl-{_e(s.key)}">{_e(s.title)}</a>{"" if s.absent is None else " (absent)"}</li>'
                  for s in report.sections)
    body = "".join(_section(s) for s in report.sections)
    attrs = (f'data-model="{_e(p["model"]["name"])}" data-layer="{_e(p["layer"])}" data-unit="{p["unit"]}" '
             f'data-weights-sha256="{_e(p["model"]["weights_sha256"])}" data-image-sha256="{_e(p["image"]["sha256"])}"')
    return (f'<div class="dl-report" {attrs}><style>{CSS}</style><h1>{title}</h1>'
            f'<p class="dl-note">deconvlab {_e(p["deconvlab_version"])}, method {_e(p["method"])}, '
            f'{_e(p["seed"])} seed, made {_e(p["date"])}</p>'
            f'<nav aria-label="Sections"><ul>{nav}<li><a href="#dl-provenance">Provenance</a></li></ul></nav>'
            f"{body}{_provenance(p)}</div>")


def document(report) -> str:
    """The page as one self-contained HTML document."""
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="deconvlab {_e(report.provenance["deconvlab_version"])}">'
            f"<title>{_e(report.title)} - deconvlab</title></head>"
            f"<body><main>{fragment(report)}</main></body></html>\n")


def summary_sheet(report, side: int = 224, pad: int = 6, text: int = 16) -> Image.Image:
    """The input (its receptive field outlined), the three projections and the feature map in a row."""
    figs = [report["input"]] + [f for f in report.section("projections").figures] + [report["feature-map"]]
    sheet = Image.new("RGB", (pad + len(figs) * (side + pad), side + text + 2 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, f in enumerate(figs):
        im = f.image.resize((side, side), Image.NEAREST)
        x0 = pad + i * (side + pad)
        sheet.paste(im, (x0, pad))
        if f.box is not None:
            s = side / f.image.width
            t, l, b, r = f.box
            draw.rectangle([x0 + l * s, pad + t * s, x0 + r * s - 1, pad + b * s - 1], outline=(255, 45, 85), width=2)
        draw.text((x0, side + pad + 2), f.title.split(" (")[0][:36], fill="black")
    return sheet


class _Reader(HTMLParser):
    """Collects what ``read_report`` answers from a page ``document`` wrote."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, str] = {}
        self.absent: dict[str, str] = {}
        self.figures: dict[str, dict] = {}
        self.provenance_text = ""
        self._section = self._figure = None
        self._in = ""  # "json" or "absent": the text being read

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-section" in a:
            self._section = a["data-section"]
            self.sections[self._section] = a.get("data-state", "")
        elif tag == "figure" and "data-figure" in a:
            self._figure = a["data-figure"]
        elif tag == "img" and self._figure is not None:
            src = a.get("src", "")
            png = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:image/png;base64,") else None
            self.figures[self._figure] = {"section": self._section, "alt": a.get("alt"), "src": src, "png": png}
        elif tag == "script" and a.get("id") == "deconvlab-provenance":
            self._in = "json"
        elif tag == "p" and "dl-absent" in (a.get("class") or ""):
            self._in = "absent"

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        elif tag in ("script", "p"):
            self._in = ""

    def handle_data(self, data):
        if self._in == "json":
            self.provenance_text += data
        elif self._in == "absent" and self._section is not None:
            self.absent[self._section] = self.absent.get(self._section, "") + data


def read_report(text: str) -> dict:
    """A saved page read back: ``{"provenance": dict, "sections": {key: "present"|"absent"},
    "absent": {key: the sentence}, "figures": {key: {"section", "alt", "src", "png": bytes or None}}}``."""
    r = _Reader()
    r.feed(text)
    r.close()
    if not r.provenance_text:
        raise ValueError("report: expected a deconvlab unit report (a deconvlab-provenance block), got none")
    return {"provenance": json.loads(r.provenance_text.replace("<\\/", "</")), "sections": r.sections,
            "absent": r.absent, "figures": r.figures}
