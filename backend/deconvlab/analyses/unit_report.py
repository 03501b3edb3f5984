"""One unit's page as data, and as one self-contained HTML file (issue 16, "Share").

Zeiler & Fergus (2013) read a unit by several pictures at once: its projection
to pixel space (Sec. 2.1), "the top 9 activations ... each projected separately
down to pixel space" next to "the corresponding image patches" (Fig. 2), the
evolution of its strongest activation over training (Fig. 4) and the
occlusion maps (Fig. 7). ``build_report`` gathers those for one unit of one
image into a ``UnitReport``; ``UnitReport.save`` writes it as one HTML file
whose every image is an inline ``data:image/png`` URI (no script, no external
URL: a Content-Security-Policy of ``default-src 'none'`` says so to the
browser), and ``deconvlab.show(net, image, "conv5", 12)`` displays it in a
notebook (``_repr_html_``; ``_repr_png_`` gives the main row as one picture,
and each ``Figure`` of it is a picture too: ``report["projection-guided"]``).

===============  ==========================================  ===============================================
section (key)    what it shows                               absent when (the report says so, and why)
===============  ==========================================  ===============================================
``input``        the model's view of the image; the point    never
                 seed's receptive field outlined
``projections``  deconvnet, guided backprop and gradient     never
                 projections (each on its own scale)
``feature-map``  the unit's map through viridis              never
``top``          the top-9 data-set patches and their        no ``index`` given, or the layer not in it
                 point-seed deconvnet projections (Fig. 2)
``evolution``    the unit's strongest activation at every    no ``evolution`` given (a model without
                 training snapshot, projected (Fig. 4)       snapshots), or the layer not scanned
``occlusion``    the three maps of Fig. 7, for each given    none given (never computed here)
                 result (``OcclusionResult`` or a mapping)
``sanity``       a sanity strip, when one was computed       none given (``sanity``: a ``Section`` or a
                                                             mapping, see ``sanity_section``)
``provenance``   model, sha256 of its weights, layer, unit,  never (also as ``<script type=
                 method, seed, position, image sha256,       "application/json" id="deconvlab-provenance">``
                 deconvlab version, date                     and ``data-key`` attributes)
===============  ==========================================  ===============================================

``absent={"top": "why"}`` lets a caller that knows better (the server: "the
top-k index is building") say why a section is missing. Rules of the numbers:

* the weights' sha256 is :func:`deconvlab.index.model_sha256` of the model as
  it runs (the state dict's names, dtypes, shapes and bytes; the top-k
  index's manifest names the same hash);
* the image's sha256 is that of the file's bytes when a path or bytes are
  given (the server's ``image_id`` is its first 24 hex digits), else of the
  decoded RGB pixels (``image.sha256_of`` says which);
* ``position`` is the point seed's (y, x): the one given, else the unit's
  strongest activation (``Net.seed_box``); null for a map seed or an fc unit.

Errors: an unknown layer is the ``Net``'s ``KeyError``; a unit, position,
method or seed out of range a ``ValueError`` ("expected X, got Y").

``read_report(html)`` reads a saved page back (provenance, section states,
figures as PNG bytes). The HTML itself is written by ``_unit_report_html``;
this module (about 530 lines) keeps the seven sections' builders together, as
they are one idea: the page of one unit.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from ._unit_report_html import read_report  # noqa: F401 (public here: a saved page read back)

METHODS = ("deconv", "guided", "backprop")
METHOD_NAMES = {"deconv": "deconvnet (Zeiler & Fergus)", "guided": "guided backpropagation",
                "backprop": "gradient (plain backpropagation)"}
SECTIONS = ("input", "projections", "feature-map", "top", "evolution", "occlusion", "sanity")
TITLES = {"input": "Input", "projections": "Projections", "feature-map": "Feature map",
          "top": "Top-9 data-set patches (Fig. 2)", "evolution": "Evolution over training (Fig. 4)",
          "occlusion": "Occlusion sensitivity (Fig. 7)", "sanity": "Sanity checks"}


# ------------------------------------------------------------------ the data

@dataclass
class Figure:
    """One picture of the report: its key, title, the image, its alt text, a caption."""

    key: str
    title: str
    image: Image.Image
    alt: str
    caption: str = ""
    legend: list = field(default_factory=list)  # [(hex colour, label)] for a categorical map
    box: tuple | None = None  # (top, left, bottom, right) outlined over the image, in its pixels

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()


@dataclass
class Section:
    """One part of the page: its figures, or why it has none (``absent``)."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    absent: str | None = None
    note: str = ""
    columns: int = 0  # figures per row (0: as many as fit)

    @property
    def state(self) -> str:
        return "absent" if self.absent is not None else "present"


class UnitReport:
    """A unit's page: ``sections`` (in ``SECTIONS`` order) and ``provenance`` (a JSON-able dict)."""

    def __init__(self, sections: Sequence[Section], provenance: dict):
        self.sections = list(sections)
        self.provenance = provenance

    @property
    def title(self) -> str:
        p = self.provenance
        return f"{p['model']['name']} {p['layer']} unit {p['unit']}"

    def section(self, key: str) -> Section:
        for s in self.sections:
            if s.key == key:
                return s
        raise KeyError(f"unknown section: expected one of {[s.key for s in self.sections]}, got {key!r}")

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]

    def __getitem__(self, key: str) -> Figure:
        for f in self.figures():
            if f.key == key:
                return f
        raise KeyError(f"unknown figure: expected one of {[f.key for f in self.figures()]}, got {key!r}")

    def to_html(self) -> str:
        """The whole page, one self-contained HTML document."""
        from ._unit_report_html import document

        return document(self)

    def _repr_html_(self) -> str:
        from ._unit_report_html import fragment

        return fragment(self)

    def _repr_png_(self) -> bytes:
        """The main row (input, the three projections, the feature map) as one PNG."""
        from ._unit_report_html import summary_sheet

        buf = io.BytesIO()
        summary_sheet(self).save(buf, format="PNG")
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write ``to_html()`` to ``path`` (UTF-8, atomically); the path written."""
        from .._util import atomic_write

        body = self.to_html().encode("utf-8")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda f: f.write(body))

    def __repr__(self) -> str:
        states = ", ".join(f"{s.key}={s.state}" for s in self.sections)
        return f"UnitReport({self.title!r}: {states})"


# ------------------------------------------------------------------ inputs

def read_image(image) -> tuple[Image.Image, str, str]:
    """A path, encoded bytes or a PIL image -> (upright RGB image, sha256 hex, what was hashed)."""
    from ..data import open_image

    if isinstance(image, Image.Image):
        rgb = open_image(image)
        h = hashlib.sha256(f"{rgb.mode} {rgb.width}x{rgb.height}|".encode() + rgb.tobytes())
        return rgb, h.hexdigest(), f"the decoded pixels ({rgb.mode} {rgb.width}x{rgb.height}, row-major)"
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
    else:
        raise TypeError(f"image: expected a path, bytes or a PIL image, got {type(image).__name__}")
    return open_image(data), hashlib.sha256(data).hexdigest(), "the file's bytes"


def _array(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


# ------------------------------------------------------------------ sections

def input_section(view: Image.Image, box, position, alt_extra: str = "") -> Section:
    where = "" if box is None else f"; the point seed at {tuple(position) if position else 'the fc unit'} " \
                                   f"sees rows {box[0]}..{box[2] - 1}, columns {box[1]}..{box[3] - 1} (outlined)"
    fig = Figure("input", "The model's view", view,
                 alt=f"the input image as the model sees it, {view.width}x{view.height} pixels{alt_extra}",
                 caption=f"resized and centre-cropped to {view.width}x{view.height}{where}", box=box)
    return Section("input", TITLES["input"], [fig])


def projection_section(projections: Mapping[str, np.ndarray], method: str, seed: str, box) -> Section:
    from ..render import projection_image

    figs = []
    for m in METHODS:
        p = _array(projections[m])
        chosen = " (the method asked for)" if m == method else ""
        figs.append(Figure(f"projection-{m}", METHOD_NAMES[m] + chosen, projection_image(p),
                           alt=f"{METHOD_NAMES[m]} projection of the unit to input space, zero at mid grey",
                           caption=f"largest magnitude {float(np.abs(p).max()):.4g}; zero is mid grey, "
                                   f"each on its own scale", box=box))
    note = f"{'point' if seed == 'point' else 'whole-map'} seed; all three methods, the one asked for: {method}"
    return Section("projections", TITLES["projections"], figs, note=note)


def feature_map_section(act, unit: int, size: int) -> Section:
    """The unit's map (C, H, W layer) or its value on the layer's 0..max scale (fc layer)."""
    from ..render import feature_map_image

    a = _array(act)
    if a.ndim == 1:  # an fc layer: one value
        v, hi = float(a[unit]), max(float(a.max()), 1e-12)
        im = feature_map_image(np.atleast_2d(v), 0.0, hi, size=size)
        return Section("feature-map", TITLES["feature-map"], [Figure(
            "feature-map", "Activation", im, alt=f"one square: the fc unit's value {v:.4g} on the layer's "
            f"scale 0..{hi:.4g} (viridis)", caption=f"value {v:.4g}; the layer's largest {hi:.4g}")])
    m = a[unit]
    y, x = divmod(int(m.argmax()), m.shape[1])
    im = feature_map_image(m, size=size)
    return Section("feature-map", TITLES["feature-map"], [Figure(
        "feature-map", f"{m.shape[0]}x{m.shape[1]} map", im,
        alt=f"the unit's {m.shape[0]} by {m.shape[1]} feature map through viridis; strongest {float(m.max()):.4g} "
            f"at row {y}, column {x}",
        caption=f"min {float(m.min()):.4g}, max {float(m.max()):.4g} at (y, x) = ({y}, {x}); viridis, "
                f"dark purple = min, yellow = max")])


def top_section(index, layer: str, unit: int, k: int = 9) -> Section:
    """The unit's top-``k`` patches, then their projections, in rank order (a ``TopKIndex`` with ``net=``)."""
    from ..render import projection_image

    try:
        entries = index.entries(layer, unit)[:k]
        patches = [index.patch(layer, unit, e["rank"]) for e in entries]
        projections = index.projections(layer, unit)[:k]
    except KeyError as e:
        return Section("top", TITLES["top"], absent=f"the top-k index has no layer {layer!r} "
                                                    f"({e.args[0] if e.args else e})")
    except ValueError as e:
        return Section("top", TITLES["top"], absent=str(e))
    if not entries:
        return Section("top", TITLES["top"], absent="the top-k index holds no images for this unit")
    figs = []
    for kind, pics in (("patch", patches), ("projection", [projection_image(p) for p in projections])):
        for e, im in zip(entries, pics):
            what = "image patch" if kind == "patch" else "deconvnet projection of the patch"
            figs.append(Figure(f"top-{kind}-{e['rank']}", f"#{e['rank'] + 1}", im,
                               alt=f"rank {e['rank'] + 1} {what}: {e['label']}, activation {e['value']:.4g}",
                               caption=f"{e['label']}, {e['value']:.3g}"))
    note = (f"the {len(entries)} strongest activations over the {index.split} split ({index.num_images} images): "
            f"receptive-field patches (first row), their point-seed deconvnet projections (second row)")
    return Section("top", TITLES["top"], figs, note=note, columns=len(entries))


def evolution_section(ev, layer: str, unit: int, cell: int = 96) -> Section:
    """One cell per training snapshot: the projection of the unit's strongest activation, cropped."""
    from .evolution import projection_crop

    try:
        steps = ev.unit(layer, unit)
    except KeyError as e:
        return Section("evolution", TITLES["evolution"],
                       absent=f"the snapshots' scan has no layer {layer!r} ({e.args[0] if e.args else e})")
    except ValueError as e:
        return Section("evolution", TITLES["evolution"], absent=str(e))
    figs = []
    for st in steps:
        im = projection_crop(ev.projection(layer, unit, st.epoch), st.box, cell)
        figs.append(Figure(f"evolution-{st.epoch}", f"epoch {st.epoch}", im,
                           alt=f"epoch {st.epoch}: deconvnet projection of the strongest activation "
                               f"{st.value:.4g}, data-set image {st.image_index}",
                           caption=f"{st.value:.3g}, image {st.image_index}"))
    note = (f"the strongest activation over {len(ev.image_indices)} data-set images at each of "
            f"{len(steps)} training snapshots, projected and cropped to its receptive field")
    return Section("evolution", TITLES["evolution"], figs, note=note, columns=len(figs))


def occlusion_data(result, labels: Sequence[str] | None = None) -> dict:
    """An ``OcclusionResult`` (or the server's stored ``meta`` and maps, a mapping) as the one mapping
    ``occlusion_section`` reads: size, stride, grid, layer, feature_map, class_index, class_label,
    activation, probability, top_class, top_class_labels."""
    if isinstance(result, Mapping):
        return dict(result)
    name = (lambda c: labels[c] if labels is not None and c < len(labels) else str(c))
    return {"size": result.size, "stride": result.stride, "grid": list(result.grid), "layer": result.layer,
            "feature_map": result.feature_map, "class_index": result.class_index,
            "class_label": name(result.class_index), "activation": result.activation,
            "probability": result.probability, "top_class": result.top_class,
            "top_class_labels": {str(int(c)): name(int(c)) for c in np.unique(result.top_class)}}


def _lowest(a: np.ndarray, stride: int) -> str:
    i, j = divmod(int(np.argmin(a)), a.shape[1])
    return f"lowest {float(a[i, j]):.3g} with the square's top-left corner at ({i * stride}, {j * stride}) px"


def _occlusion_figures(i: int, d: dict, side: int) -> list[Figure]:
    from ..render import CLASS_COLORS, class_colors, feature_map_image, upscale

    act, prob = np.asarray(d["activation"], np.float32), np.asarray(d["probability"], np.float32)
    top = np.asarray(d["top_class"], np.int64)
    gh, gw = act.shape
    cell = max(1, round(side / max(gh, gw)))
    size = (gh * cell, gw * cell)
    stride, tracked = int(d["stride"]), f"{d['layer']}:{d['feature_map']}"
    labels = {int(k): v for k, v in dict(d.get("top_class_labels") or {}).items()}
    legend = [("#%02x%02x%02x" % tuple(int(v) for v in CLASS_COLORS[c % len(CLASS_COLORS)]), labels.get(c, str(c)))
              for c in sorted(set(np.unique(top).tolist()))]
    return [
        Figure(f"occlusion-{i}-activation", f"(b) total activation of {tracked}", feature_map_image(act, size=size),
               alt=f"occlusion map of the total activation of {tracked}, viridis on its own range; "
                   f"{_lowest(act, stride)}", caption=_lowest(act, stride)),
        Figure(f"occlusion-{i}-probability", f"(d) p({d.get('class_label', d['class_index'])})",
               feature_map_image(prob, 0.0, 1.0, size=size),
               alt=f"occlusion map of the probability of class {d.get('class_label', d['class_index'])}, viridis "
                   f"on 0..1; {_lowest(prob, stride)}", caption=_lowest(prob, stride)),
        Figure(f"occlusion-{i}-top_class", "(e) most probable class",
               Image.fromarray(np.ascontiguousarray(upscale(class_colors(top), size)), "RGB"),
               alt="occlusion map of the most probable class, one colour per class: "
                   + ", ".join(f"{label} {hexc}" for hexc, label in legend),
               caption="one colour per class", legend=legend),
    ]


def occlusion_section(results: Sequence, layer: str, unit: int, side: int = 224,
                      labels: Sequence[str] | None = None) -> Section:
    """Fig. 7's three maps for each result; a result tracking another unit says so."""
    data = [occlusion_data(r, labels) for r in results]
    if not data:
        return Section("occlusion", TITLES["occlusion"], absent="no occlusion maps computed for this image")
    figs, notes = [], []
    for i, d in enumerate(data):
        figs += _occlusion_figures(i, d, side)
        gh, gw = d["grid"]
        mine = d["layer"] == layer and int(d["feature_map"]) == int(unit)
        notes.append(f"grey square {d['size']} px, stride {d['stride']} px ({gh}x{gw} positions), tracking "
                     f"{d['layer']}:{d['feature_map']}" + ("" if mine else f" (not {layer}:{unit})"))
    return Section("occlusion", TITLES["occlusion"], figs, note="; ".join(notes), columns=3)


def _as_image(im) -> Image.Image:
    if isinstance(im, Image.Image):
        return im.convert("RGB")
    if isinstance(im, (bytes, bytearray)):
        return Image.open(io.BytesIO(bytes(im))).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(np.asarray(im, dtype=np.uint8)))


def sanity_data(result) -> dict:
    """An ``analyses.sanity.SanityResult`` as the mapping ``sanity_section`` reads: its ``to_dict()``
    with each step's ``projection`` added (the server's stored answer plus its projections is the same)."""
    d = result.to_dict()
    for step, s in zip(d["steps"], result.steps):
        step["projection"] = s.projection
    return d


def _modules(names: Sequence[str]) -> str:
    names = list(names)
    if not names:
        return "none (the trained model)"
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} modules ({names[0]} ... {names[-1]})"


def _num(v) -> str:
    return "n/a" if v is None else f"{float(v):.2f}"


def _sanity_strip(d: Mapping, cell: int = 96) -> Section:
    """Adebayo et al.'s strip: each step's projection in the receptive field, with its numbers."""
    from .evolution import projection_crop

    box, figs = d["box"], []
    for k, st in enumerate(d["steps"]):
        where = "the trained model" if not st["randomized"] else f"random {_modules(st['randomized'])}"
        figs.append(Figure(f"sanity-{k}", "trained" if k == 0 else f"step {k}",
                           projection_crop(np.asarray(st["projection"], np.float32), box, cell),
                           alt=f"step {k}: {d['method']} projection of {where}; Spearman {_num(st['spearman'])}, "
                               f"SSIM {_num(st['ssim'])} against the trained model's",
                           caption=f"{_modules(st['randomized'])}; rho {_num(st['spearman'])}, "
                                   f"SSIM {_num(st['ssim'])}"))
    note = (f"parameter randomisation (Adebayo et al. 2018), {d['mode']}, seed {d['seed']}: the {d['method']} "
            f"projection with the weights it passes through re-initialised, cropped to the receptive field "
            f"{tuple(box)}; rank correlation with the input's edges {_num(d.get('edge_spearman'))}")
    return Section("sanity", TITLES["sanity"], figs, note=note, columns=min(len(figs), 8))


def sanity_section(sanity) -> Section:
    """The sanity strip from a ``SanityResult``, a mapping like ``sanity_data``'s (``steps`` with
    ``projection``s, ``box``, ``method``, ``mode``, ``seed``), a mapping ``{"figures": [{"title",
    "image" (PIL, PNG bytes or uint8 array), "alt", "caption"}], "note"}``, or a ``Section`` as it is."""
    if sanity is None:
        return Section("sanity", TITLES["sanity"], absent="no sanity checks computed for this unit")
    if isinstance(sanity, Section):
        sanity.key = "sanity"
        return sanity
    if hasattr(sanity, "steps") and hasattr(sanity, "to_dict"):
        sanity = sanity_data(sanity)
    if not isinstance(sanity, Mapping):
        raise TypeError(f"sanity: expected a SanityResult, a Section, a mapping or None, got {type(sanity).__name__}")
    if sanity.get("steps"):
        return _sanity_strip(sanity)
    figs = [Figure(str(f.get("key", f"sanity-{i}")), str(f.get("title", "")), _as_image(f["image"]),
                   alt=str(f.get("alt") or f.get("title") or "sanity check"), caption=str(f.get("caption", "")))
            for i, f in enumerate(sanity.get("figures", []))]
    if not figs:
        return Section("sanity", TITLES["sanity"], absent=str(sanity.get("absent") or "no sanity figures"))
    return Section("sanity", str(sanity.get("title") or TITLES["sanity"]), figs, note=str(sanity.get("note", "")),
                   columns=int(sanity.get("columns", 0)))


# ------------------------------------------------------------------ the report

def _check(net, layer: str, unit, method: str, seed: str) -> None:
    net.check_layer(layer)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if seed not in ("point", "map"):
        raise ValueError(f"seed: expected 'point' or 'map', got {seed!r}")
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
        raise ValueError(f"unit: expected an integer, got {unit!r}")


def provenance(net, layer: str, unit: int, method: str, seed: str, position, box, image: dict,
               weights_sha256: str, sections: Sequence[Section], date: str | None = None) -> dict:
    """The machine-readable block: what made the report, and what it holds."""
    from .. import __version__

    meta = net.meta
    return {
        "deconvlab_version": __version__,
        "date": date or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "model": {"name": meta.name or meta.arch, "arch": meta.arch, "engine": net.engine,
                  "input_size": int(meta.input_size), "weights_sha256": weights_sha256,
                  "weights_sha256_of": "the state dict as the model runs (deconvlab.index.model_sha256)"},
        "layer": layer, "unit": int(unit), "method": method, "seed": seed,
        "position": None if position is None else [int(position[0]), int(position[1])],
        "box": None if box is None else [int(v) for v in box],
        "image": image,
        "sections": {s.key: "present" if s.absent is None else f"absent: {s.absent}" for s in sections},
    }


def build_report(net, image, layer: str, unit: int, *, method: str = "deconv", seed: str = "point",
                 position: tuple[int, int] | None = None, index=None, evolution=None, occlusion=None,
                 sanity=None, absent: Mapping[str, str] | None = None, rec=None,
                 projections: Mapping[str, np.ndarray] | None = None, weights_sha256: str | None = None,
                 top_k: int = 9, date: str | None = None) -> UnitReport:
    """The unit's report (see the module doc). ``net``: a ``Net``; ``image``: a path, bytes or a PIL image.

    Optional sections come as data: ``index`` (a ``TopKIndex`` opened with ``net=``), ``evolution``
    (a scanned ``analyses.evolution.Evolution``), ``occlusion`` (one result or a list: an
    ``OcclusionResult`` or a mapping, ``occlusion_data``), ``sanity`` (``sanity_section``); each
    missing one is an absent section, its reason ``absent[key]`` when given. ``rec`` (``net.forward``
    of the image) and ``projections`` (method -> 3xHxW array) reuse what a caller already computed.
    """
    from ..data import resize_crop

    _check(net, layer, unit, method, seed)
    rgb, sha, sha_of = read_image(image)
    S = int(net.meta.input_size)
    if rec is None:
        rec = net.forward(net.preprocess(rgb))
    act = net.activation(rec, layer)[0]
    if not 0 <= int(unit) < act.shape[0]:
        raise ValueError(f"unit: expected 0..{act.shape[0] - 1} for layer {layer}, got {unit!r}")
    pos, box = net.seed_box(rec, layer, int(unit), position) if seed == "point" else (None, None)
    have = dict(projections or {})
    for m in METHODS:
        if m not in have:
            have[m] = net.project(rec, layer, int(unit), method=m, seed=seed, position=pos)
    outline = box if pos is not None else None
    sections = [input_section(resize_crop(rgb, S), outline, pos), projection_section(have, method, seed, outline),
                feature_map_section(act, int(unit), S)]
    sections += _optional(net, layer, int(unit), index, evolution, occlusion, sanity, dict(absent or {}), top_k, S)
    image_info = {"sha256": sha, "sha256_of": sha_of, "width": rgb.width, "height": rgb.height}
    if weights_sha256 is None:
        from ..index.store import model_sha256

        weights_sha256 = model_sha256(net)
    return UnitReport(sections, provenance(net, layer, int(unit), method, seed, pos, box, image_info,
                                           weights_sha256, sections, date))


def _optional(net, layer, unit, index, evolution, occlusion, sanity, absent: dict, top_k: int, S: int):
    def missing(key: str, default: str) -> Section:
        return Section(key, TITLES[key], absent=absent.get(key, default))

    out = [top_section(index, layer, unit, top_k) if index is not None else
           missing("top", "no top-k index given (build one with `deconvlab index`)"),
           evolution_section(evolution, layer, unit) if evolution is not None else
           missing("evolution", f"no training snapshots for model {net.meta.name or net.meta.arch!r}")]
    results = [] if occlusion is None else (list(occlusion) if isinstance(occlusion, (list, tuple)) else [occlusion])
    out.append(occlusion_section(results, layer, unit, S, net.meta.classes) if results else
               missing("occlusion", "no occlusion maps computed for this image"))
    out.append(sanity_section(sanity) if sanity is not None else
               missing("sanity", "no sanity checks computed for this unit"))
    return out


def show(net, image, layer: str, unit: int, method: str = "deconv", **kw) -> UnitReport:
    """``build_report`` for a notebook: ``deconvlab.show(net, image, "conv5", 12)`` displays the page
    inline (``_repr_html_``). ``net`` may be a registry name or checkpoint (``deconvlab.load``)."""
    if isinstance(net, (str, Path)):
        from .. import load

        net = load(str(net))
    return build_report(net, image, layer, unit, method=method, **kw)

