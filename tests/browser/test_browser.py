"""The browser app end to end: Debian's Chromium (Playwright) against a live ``deconvlab serve``.

One server for the module, started as a subprocess on a free loopback port,
with its own models folder (a small random-weight ZFNet named
``zfnet-imagenette``, with two seeded "training snapshots" for the evolution
strip, and ``tiny-resnet``: torchvision's resnet18 with seeded random weights
at 64 px, registered with ``user_models.register`` as a user would, so the app
meets a graph model of 80+ layers), a tiny generated ImageFolder data set and
both models' top-k indexes, so nothing here depends on training or on the
shared data. axe-core (``tests/browser/node_modules``,
``make browser-deps``) checks the main states for serious or critical
accessibility violations, desktop and phone, light and dark. The image
the test uploads is a real Imagenette JPEG when ``$DECONVLAB_DATA`` has one,
else a generated picture.

``DECONVLAB_TEST_SERVER=http://127.0.0.1:8000`` drives a server that is
already running instead (its own models and index).

Screenshots land in the test's ``tmp_path``; each is checked for not being
blank (pixel variance), and the page's words are checked against what the
API itself answers (the same error detail, the same predictions).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import live_server, scratch_dir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-gpu", "--no-first-run", "--disable-sync"]
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: `make browser-deps` (apt-get install chromium) installs it"),
]

TIMEOUT_MS = 20_000


def _tiny_imagefolder(root: Path) -> Path:
    """3 classes x 4 generated pictures in val/ (and one in train/): enough for a top-9."""
    from conftest import make_sample_image

    for split, per_class in (("val", 4), ("train", 1)):
        for c, wnid in enumerate(["n01440764", "n02102040", "n02979186"]):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                make_sample_image(160 + 16 * i, 144, seed=100 * c + i).save(d / f"img{i}.png")
    return root


def _upload_image(tmp: Path) -> Path:
    """A real Imagenette JPEG when the data is here, else a generated JPEG."""
    data = os.environ.get("DECONVLAB_DATA")
    if data:
        for split in ("val", "train"):
            found = sorted((Path(data) / split).glob("*/*.JPEG"))[:1]
            if found:
                return found[0]
    from conftest import make_sample_image

    path = tmp / "upload.jpg"
    make_sample_image(320, 240, seed=7).save(path, quality=90)
    return path


def _not_blank(png: Path, min_std: float = 8.0) -> float:
    a = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    std = float(a.std())
    assert std > min_std, f"{png.name} looks blank: pixel std {std:.2f}"
    return std


def _has_serve() -> bool:
    from deconvlab import cli

    return "serve" in getattr(cli, "COMMANDS", {})


TINY_RESNET = "tiny-resnet"
AXE = REPO / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"


def _register_tiny_resnet(models: Path) -> None:
    """torchvision's resnet18 (3 classes, seeded random weights, 64 px) as a user's registry entry."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from deconvlab.nets.user_models import register

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    weights = models / "tiny-resnet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    register(TINY_RESNET, "torchvision:resnet18", weights=weights, classes=["tench", "springer", "cassette"],
             input_size=64, models_dir=models)


def _served_graph_model(server: str) -> dict | None:
    """The tiny ResNet as /api/models lists it, or None when this server does not serve it."""
    models = httpx.get(f"{server}/api/models").json()["models"]
    return next((m for m in models if m["id"] == TINY_RESNET), None)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    external = os.environ.get("DECONVLAB_TEST_SERVER")
    if external:  # a server already running (e.g. `make run`): drive it as it is
        yield external.rstrip("/")
        return
    if not _has_serve():
        pytest.skip("`deconvlab serve` (the REST API, issue 5) has not landed yet; "
                    "or set DECONVLAB_TEST_SERVER=http://host:port to drive a running server")
    from conftest import small_zfnet_module
    from deconvlab.nets import save_checkpoint

    with scratch_dir(tmp_path_factory, "browser") as root:
        models = root / "models"
        model, meta = small_zfnet_module()
        save_checkpoint(models / "zfnet-imagenette" / "model.safetensors", model, meta)
        for epoch in (1, 2):  # Fig. 4's strip: two "snapshots" (other seeds), as `deconvlab publish` lays them out
            snap, _ = small_zfnet_module(seed=epoch)
            save_checkpoint(models / "zfnet-imagenette" / "snapshots" / f"epoch-{epoch:03d}.safetensors", snap, meta)
        (models / "registry.json").write_text(json.dumps({
            "default": "zfnet-imagenette",
            "models": {"zfnet-imagenette": {"checkpoint": "zfnet-imagenette/model.safetensors",
                                            "snapshots": "zfnet-imagenette/snapshots"}},
        }))
        _register_tiny_resnet(models)
        data = _tiny_imagefolder(root / "data")
        env = {
            **os.environ,
            "DECONVLAB_MODELS": str(models),
            "DECONVLAB_DATA": str(data),
            "DECONVLAB_CACHE": str(root / "cache"),
            "DECONVLAB_STATE_DIR": str(root / "state"),  # uploads and results, not in the user cache
            "DECONVLAB_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
        }
        # The top-k indexes the gallery reads, where the server looks for them (in-process:
        # a `deconvlab index` subprocess would spend most of its time importing torch). The
        # ResNet's covers every layer it lists (block outputs, inner layers) over the 12 images.
        from deconvlab.index import build_index

        with pytest.MonkeyPatch.context() as mp:
            for key in ("DECONVLAB_MODELS", "DECONVLAB_DATA", "DECONVLAB_CACHE"):
                mp.setenv(key, env[key])
            for name in ("zfnet-imagenette", TINY_RESNET):
                build_index(name, data, "val", k=9, batch_size=16, workers=0, progress=False)

        with live_server(env, root, timeout=240) as base:  # start-up loads both models: slow on busy cores
            yield base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _state(page) -> dict:
    return page.evaluate("() => { const s = window.deconvlab.state(); return {model: s.model, image: s.image,"
                         " layer: s.layer, unit: s.unit, method: s.method, seed: s.seed, position: s.position}; }")


def _wait_img(page, selector: str) -> None:
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return !!i && !i.hidden && i.complete && i.naturalWidth > 0; }",
        arg=selector)


def _wait_gallery(page, n: int) -> None:
    page.wait_for_function(
        """n => ['topk-patch', 'topk-projection'].every(t => {
              const imgs = [...document.querySelectorAll(`[data-testid=${t}] img`)];
              return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); })""",
        arg=n)


def _patches_are(page, entries: list[dict]) -> None:
    """The gallery shows the API's entries, in rank order (each patch image is its entry's patch_url)."""
    srcs = page.locator("[data-testid=topk-patch] img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
    assert [s.split("?")[0] for s in srcs] == [e["patch_url"].split("?")[0] for e in entries]


def _fmt(v: float) -> str:
    """The app's number format (views/dom.js fmt): 3 decimals, 1 from 100 on, exponent beyond 1e4 or below 1e-3."""
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{v:.2e}".replace("e+0", "e+").replace("e-0", "e-")
    return f"{v:.1f}" if a >= 100 else f"{v:.3f}"


def _download(page, selector: str, tmp: Path) -> tuple[str, Image.Image]:
    """Click a download control; (suggested file name, the saved PNG)."""
    with page.expect_download() as dl:
        page.click(selector)
    path = tmp / dl.value.suggested_filename
    dl.value.save_as(str(path))
    return dl.value.suggested_filename, Image.open(path)


def test_upload_explore_reload_and_bad_upload(server, page, tmp_path):
    page.goto(server + "/")
    page.wait_for_selector("[data-testid=layer-tab]")

    # Upload a real image through the file picker.
    page.set_input_files("[data-testid=file-input]", str(_upload_image(tmp_path)))
    page.wait_for_selector("[data-testid=prediction]")
    _wait_img(page, ".input-img")
    image_id = _state(page)["image"]
    assert image_id
    # The top-5 on the page are the API's top-5.
    api_preds = httpx.get(f"{server}/api/images/{image_id}/predictions", params={"k": 5}).json()["predictions"]
    shown = page.locator("[data-testid=prediction] .pred-label").all_inner_texts()
    assert shown == [f"{i + 1}. {p['label']}" for i, p in enumerate(api_preds)]

    # A layer, then a unit: the projection and the Fig. 2 gallery load.
    page.click("[data-testid=layer-tab][data-layer=conv2]")
    page.wait_for_selector("[data-testid=unit][data-unit='3']")
    units = httpx.get(f"{server}/api/images/{image_id}/layers/conv2").json()["units"]
    assert page.locator("[data-testid=unit]").count() == len(units)
    page.click("[data-testid=unit][data-unit='3']")
    _wait_img(page, ".projection-img")
    _wait_img(page, "[data-testid=feature-map]")
    _wait_gallery(page, 9)
    page.wait_for_selector("[data-testid=unit-box]:not([hidden])")
    before = _state(page)
    assert before["layer"] == "conv2" and before["unit"] == 3
    url = page.url
    assert f"image={image_id}" in url and "layer=conv2" in url and "unit=3" in url

    # Click a position of the feature map: the link holds it, the projection follows it.
    box = page.locator("[data-testid=feature-map]").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)
    page.wait_for_function("() => window.deconvlab.state().position !== null")
    page.click("[data-testid=method-guided]")
    page.wait_for_function("() => window.deconvlab.state().projection.status === 'ok'")
    _wait_img(page, ".projection-img")
    view = _state(page)
    assert view["method"] == "guided" and view["position"] is not None
    shot1 = tmp_path / "explore.png"
    page.screenshot(path=str(shot1), full_page=True)
    _not_blank(shot1)
    proj1 = tmp_path / "projection.png"
    page.locator("[data-testid=projection]").screenshot(path=str(proj1))
    _not_blank(proj1, min_std=2.0)

    # Reload the deep link: the same view comes back.
    deep = page.url
    page.reload()
    page.wait_for_selector("[data-testid=prediction]")
    _wait_img(page, ".projection-img")
    _wait_gallery(page, 9)
    assert page.url == deep
    assert _state(page) == view
    assert page.locator("[data-testid=layer-tab][aria-selected=true]").inner_text() == "conv2"
    assert page.locator("[data-testid=unit][aria-selected=true]").get_attribute("data-unit") == "3"
    shot2 = tmp_path / "reloaded.png"
    page.screenshot(path=str(shot2), full_page=True)
    _not_blank(shot2)

    # A text file named .jpg: the page shows the server's own words, and keeps the image.
    bad = b"this is not a JPEG, only text with a .jpg name\n"
    detail = httpx.post(f"{server}/api/images", files={"file": ("bad.jpg", bad, "image/jpeg")}).json()["detail"]
    assert isinstance(detail, str) and detail
    page.set_input_files("[data-testid=file-input]",
                         files=[{"name": "bad.jpg", "mimeType": "image/jpeg", "buffer": bad}])
    err = page.locator("[data-testid=upload-status].error")
    err.wait_for()
    assert detail in err.inner_text()
    assert _state(page)["image"] == image_id
    page.screenshot(path=str(tmp_path / "bad-upload.png"))
    _not_blank(tmp_path / "bad-upload.png")


def test_keyboard_panels_drop_and_messages(server, page, tmp_path):
    # A sample from the strip becomes the image (fetched, then POSTed to /api/images).
    page.goto(server + "/")
    page.wait_for_selector("[data-testid=sample] img")
    page.click("[data-testid=sample] >> nth=0")
    page.wait_for_selector("[data-testid=prediction]")
    first_image = _state(page)["image"]
    assert first_image

    # Keyboard: ] moves to the next layer, arrows move between units, focus follows.
    page.locator("body").press("]")
    page.wait_for_function("() => window.deconvlab.state().layer === 'conv2'")
    page.wait_for_selector("[data-testid=unit]")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => window.deconvlab.state().unit === 1")
    assert page.evaluate("document.activeElement.dataset.unit") == "1"
    page.keyboard.press("[")
    page.wait_for_function("() => window.deconvlab.state().layer === 'conv1'")

    # Sorting by activation puts the strongest (starred) unit first.
    page.select_option("[data-testid=sort]", "activation")
    page.wait_for_function("() => document.querySelector('[data-testid=unit]')?.classList.contains('strongest')")
    first = page.locator("[data-testid=unit] >> nth=0")
    assert first.locator("[data-testid=strongest]").count() == 1

    # An fc layer: a heat grid, one cell per unit; the evolution pane says it is not available
    # in the words of the server when the route answers 404.
    page.click("[data-testid=layer-tab][data-layer=fc6]")
    page.wait_for_selector(".unit-grid.fc [data-testid=unit]")
    page.click("[data-testid=unit][data-unit='5']")
    _wait_img(page, ".projection-img")
    evo = httpx.get(f"{server}/api/layers/fc6/units/5/evolution")
    status = page.locator("[data-testid=evolution-status]")
    if evo.status_code == 404:
        page.wait_for_function(
            "() => document.querySelector('[data-testid=evolution-status]').textContent.startsWith('Not available')")
        assert evo.json()["detail"] in status.inner_text()
    else:
        page.wait_for_selector("[data-testid=evolution-snapshot] img")

    # Filters (Fig. 6), closed with Esc.
    page.click("[data-testid=open-filters]")
    _wait_img(page, "[data-testid=filters-img]")
    page.locator("[data-testid=filters]").screenshot(path=str(tmp_path / "filters.png"))
    _not_blank(tmp_path / "filters.png")
    page.keyboard.press("Escape")
    page.wait_for_selector("[data-testid=filters]", state="hidden")

    # Occlusion (Fig. 7) with a coarse grid: progress while it runs, then three maps.
    page.click("[data-testid=open-occlusion]")
    page.select_option("[data-testid=occ-size]", "64")
    page.select_option("[data-testid=occ-stride]", "32")
    page.click("[data-testid=occ-run]")
    page.wait_for_selector("[data-testid=occlusion-activation] canvas", timeout=60_000)
    for kind in ("activation", "probability", "top_class"):
        assert page.locator(f"[data-testid=occlusion-{kind}] canvas").count() == 1
    assert page.locator("[data-testid=occlusion-legend] li").count() >= 1
    occ = page.evaluate("() => window.deconvlab.state().occlusion.data")
    with page.expect_download() as dl:  # each map's PNG, named by model, image, layer, window and stride
        page.click("[data-testid=download-occlusion-probability]")
    assert dl.value.suggested_filename == \
        f"{occ['model']}_{occ['image_id'][:12]}_{occ['layer']}_s64-32_occlusion-probability.png"
    page.locator("[data-testid=occlusion]").screenshot(path=str(tmp_path / "occlusion.png"))
    _not_blank(tmp_path / "occlusion.png")
    page.keyboard.press("Escape")
    page.wait_for_selector("[data-testid=occlusion]", state="hidden")

    # Drag and drop a file onto the upload zone.
    buf = io.BytesIO()
    Image.fromarray((np.indices((120, 150)).sum(0) % 255).astype(np.uint8)).convert("RGB").save(buf, "PNG")
    page.evaluate(
        """bytes => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
            const zone = document.querySelector('[data-testid=upload]');
            zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""", list(buf.getvalue()))
    page.wait_for_function("first => { const s = window.deconvlab.state(); return s.image && s.image !== first"
                           " && s.predictions.status === 'ok'; }", arg=first_image)

    # Paste an image (Ctrl+V): the clipboard's first file is uploaded.
    dropped = _state(page)["image"]
    buf = io.BytesIO()
    Image.fromarray((np.indices((90, 110)).prod(0) % 251).astype(np.uint8)).convert("RGB").save(buf, "PNG")
    page.evaluate(
        """bytes => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], 'pasted.png', {type: 'image/png'}));
            document.body.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
        }""", list(buf.getvalue()))
    page.wait_for_function("prev => { const s = window.deconvlab.state(); return s.image && s.image !== prev"
                           " && s.predictions.status === 'ok'; }", arg=dropped)

    # A link to an image the server does not have: the words of its 404, not a blank pane.
    missing = "0" * 16
    detail = httpx.get(f"{server}/api/images/{missing}").json()["detail"]
    page.goto(f"{server}/#image={missing}&layer=conv1")
    page.wait_for_selector("[data-testid=input-status].error")
    assert detail in page.inner_text("[data-testid=input-status]")


def _graph_model_or_skip(server: str) -> dict:
    m = _served_graph_model(server)
    if m is None:
        pytest.skip(f"this server does not serve {TINY_RESNET!r} (a graph model): the picker's grouping needs one")
    return m


def test_graph_model_picker_search_unit_and_deep_link(server, page, tmp_path):
    """A ResNet's 80+ layers: grouped by stage, block outputs first, the filter box finds layer3.1."""
    model = _graph_model_or_skip(server)
    page.goto(server + "/")
    page.wait_for_selector("[data-testid=sample] img")
    page.click("[data-testid=sample] >> nth=0")
    page.wait_for_function("() => window.deconvlab.state().imageInfo.status === 'ok'")
    image = _state(page)["image"]
    page.click("[data-testid=layer-tab][data-layer=conv2]")

    # Switch model: the image stays; conv2 is no ResNet layer, so one as deep is picked.
    page.select_option("[data-testid=model-select]", TINY_RESNET)
    page.wait_for_function("m => window.deconvlab.state().model === m", arg=TINY_RESNET)
    st = _state(page)
    assert st["image"] == image
    names = [l["name"] for l in model["layers"]]
    assert st["layer"] in names
    assert f"model={TINY_RESNET}" in page.url
    # Its predictions: as many as it has classes (3 < 5), the same as the API's.
    k = min(5, len(model["classes"]))
    page.wait_for_function("k => document.querySelectorAll('[data-testid=prediction]').length === k", arg=k)
    api = httpx.get(f"{server}/api/images/{image}/predictions", params={"model": TINY_RESNET, "k": k}).json()["predictions"]
    assert page.locator("[data-testid=prediction] .pred-label").all_inner_texts() == [f"{i + 1}. {p['label']}" for i, p in enumerate(api)]
    assert page.inner_text("#pred-title") == f"Top-{k} predictions"

    # Grouping: the stages as the API's parents say, each showing its block outputs; inner layers hidden.
    stages = sorted({l["name"] for l in model["layers"] if l["parent"] is None and any(
        m["parent"] == l["name"] for m in model["layers"])})
    shown = page.locator(".layer-group .group-label").all_inner_texts()
    for s in stages:
        assert any(t.startswith(s) for t in shown), (s, shown)
    assert page.locator("[data-testid=layer-tab][data-layer='layer3.1']").count() == 1
    assert page.locator("[data-testid=layer-tab][data-layer='layer3.1.conv1']").count() == 0
    assert page.locator("[data-testid=layer-tab]").count() < len(names) / 2

    # The filter box finds layer3.1's inner layers; Enter picks the first match.
    page.fill("[data-testid=layer-search]", "layer3.1")
    page.wait_for_selector("[data-testid=layer-tab][data-layer='layer3.1.relu_1']")
    want = [n for n in names if "layer3.1" in n]
    got = page.locator("[data-testid=layer-tab]").evaluate_all("els => els.map(e => e.dataset.layer)")
    assert got == want
    page.fill("[data-testid=layer-search]", "no-such-layer")
    page.wait_for_function("() => document.querySelector('[data-testid=layer-search-status]').textContent.startsWith('No layer')")
    page.fill("[data-testid=layer-search]", "layer3.1")
    page.press("[data-testid=layer-search]", "Enter")
    page.wait_for_function("() => window.deconvlab.state().layer === 'layer3.1.conv1'")
    page.fill("[data-testid=layer-search]", "")

    # Arrow keys on the tabs move the selection and the focus together.
    page.focus("[data-testid=layer-tab][aria-selected=true]")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => window.deconvlab.state().layer === 'layer3.1.bn1'")
    assert page.evaluate("document.activeElement.dataset.layer") == "layer3.1.bn1"
    # The colour bar's numbers: no unit chosen, so the strongest unit's own min..max (a batch norm's
    # output: not rectified, its min is no zero), as the API's layer summary gives them.
    bn = httpx.get(f"{server}/api/images/{image}/layers/layer3.1.bn1", params={"model": TINY_RESNET}).json()["units"]
    best = max(bn, key=lambda u: (u["max"], -u["unit"]))
    assert best["min"] != 0 and best["min"] < best["max"]
    page.wait_for_function("() => document.querySelector('[data-testid=units-legend] .legend-lo').textContent.startsWith('unit ')")
    assert page.inner_text("[data-testid=units-legend] .legend-lo") == f"unit {best['unit']}: {_fmt(best['min'])}"
    assert page.inner_text("[data-testid=units-legend] .legend-hi") == _fmt(best["max"])

    # The block output, a unit: its projection; shot for a person to look at.
    page.click("[data-testid=layer-tab][data-layer='layer3.1']")
    page.wait_for_selector("[data-testid=unit][data-unit='5']")
    units = httpx.get(f"{server}/api/images/{image}/layers/layer3.1", params={"model": TINY_RESNET}).json()["units"]
    assert page.locator("[data-testid=unit]").count() == len(units)
    page.click("[data-testid=unit][data-unit='5']")
    _wait_img(page, ".projection-img")
    # Its top-9 from the ResNet's own index (built over the 12 data-set images by the fixture).
    top = httpx.get(f"{server}/api/layers/layer3.1/units/5/top", params={"model": TINY_RESNET})
    assert top.status_code == 200, top.text
    entries = top.json()["entries"]
    assert len(entries) == 9
    _wait_gallery(page, 9)
    assert "layer3.1 unit 5" in page.inner_text("[data-testid=topk-status]")
    _patches_are(page, entries)
    page.screenshot(path=str(tmp_path / "resnet.png"), full_page=True)
    _not_blank(tmp_path / "resnet.png")

    # The deep link with dots in the layer name comes back whole.
    deep = page.url
    assert "layer=layer3.1&" in deep or deep.endswith("layer=layer3.1") or "layer=layer3.1&unit=5" in deep
    page.reload()
    _wait_img(page, ".projection-img")
    _wait_gallery(page, 9)
    _patches_are(page, entries)
    assert page.url == deep
    assert _state(page)["layer"] == "layer3.1" and _state(page)["unit"] == 5
    assert page.locator("[data-testid=layer-tab][aria-selected=true]").get_attribute("data-layer") == "layer3.1"


def test_lazy_thumbnails_and_explanations(server, page):
    """A 256- or 512-map layer asks only for the thumbnails on screen; the controls explain themselves."""
    model = _graph_model_or_skip(server)
    big = max((l for l in model["layers"] if len(l["shape"]) == 3), key=lambda l: l["channels"])
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url) if "/map.png" in r.url and "size=64" in r.url else None)
    page.goto(server + "/")
    page.wait_for_selector("[data-testid=sample] img")
    page.click("[data-testid=sample] >> nth=1")
    page.wait_for_function("() => window.deconvlab.state().imageInfo.status === 'ok'")
    image = _state(page)["image"]
    page.goto(f"{server}/#model={TINY_RESNET}&image={image}&layer={big['name']}")
    page.wait_for_selector(f"[data-testid=unit][data-unit='{big['channels'] - 1}']")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=unit] img').length > 0")
    page.wait_for_timeout(500)
    first = len(requested)
    assert 0 < first < big["channels"] / 2, f"{first} thumbnails asked for {big['channels']} maps"
    page.locator(f"[data-testid=unit][data-unit='{big['channels'] - 1}']").scroll_into_view_if_needed()
    page.wait_for_function(f"() => !!document.querySelector(\"[data-testid=unit][data-unit='{big['channels'] - 1}'] img\")")
    assert any(f"/units/{big['channels'] - 1}/map.png" in u for u in requested)

    # Sorted by activation on request: the strongest first.
    page.select_option("[data-testid=sort]", "activation")
    page.wait_for_function("() => document.querySelector('[data-testid=unit]')?.classList.contains('strongest')")

    # Classes named beside the predictions; method and seed explained, with the paper's section.
    assert f"knows {len(model['classes'])} classes" in page.inner_text("[data-testid=model-classes]")
    page.click("[data-testid=unit] >> nth=0")
    explain = page.inner_text("[data-testid=explain]")
    assert "Deconvnet" in explain and "Point seed" in explain and "Sec. 2.1" in explain
    page.click("[data-testid=method-guided]")
    assert "Guided backprop" in page.inner_text("[data-testid=explain]")


def _crop(page) -> dict:
    """The receptive-field crop canvas: size, grey-level spread, caption."""
    return page.evaluate("""() => { const c = document.querySelector('.crop-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0, s2 = 0, n = 0;
        for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; s += v; s2 += v * v; n += 1; }
        return { w: c.width, h: c.height, std: Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2)),
                 caption: document.querySelector('.crop-caption').textContent }; }""")


def _slide(page, testid: str, value: float) -> None:
    """Move a range slider as a person would (its value, then an input event)."""
    page.evaluate("""([t, v]) => { const el = document.querySelector(`[data-testid=${t}]`);
        el.value = String(v); el.dispatchEvent(new Event('input', { bubbles: true })); }""", [testid, value])


def test_zfnet_units_legends_downloads_keyboard_and_missing_image(server, page, tmp_path):
    page.goto(server + "/")
    page.wait_for_selector("[data-testid=sample] img")
    # One Tab stop for the sample strip: arrows move inside it.
    assert page.locator("[data-testid=sample][tabindex='0']").count() == 1
    page.focus("[data-testid=sample] >> nth=0")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.closest('[data-testid=sample]') === document.querySelectorAll('[data-testid=sample]')[1]")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=prediction]")
    image = _state(page)["image"]
    classes = httpx.get(f"{server}/api/models").json()["models"]
    zf = next(m for m in classes if m["id"] == "zfnet-imagenette")
    summary = page.inner_text("[data-testid=model-classes]")
    assert f"knows {len(zf['classes'])} classes" in summary and zf["classes"][0] in summary

    page.click("[data-testid=layer-tab][data-layer=conv2]")
    page.click("[data-testid=unit][data-unit='3']")
    _wait_img(page, ".projection-img")
    u = httpx.get(f"{server}/api/images/{image}/layers/conv2/units/3").json()
    page.wait_for_function("() => /row \\d+, column \\d+/.test(document.querySelector('[data-testid=unit-status]').textContent)")
    assert f"row {u['position'][0]}, column {u['position'][1]}" in page.inner_text("[data-testid=unit-status]")
    # Ranks 1..9 on the gallery.
    _wait_gallery(page, 9)
    assert page.locator("[data-testid=topk-patch] .rank").all_inner_texts() == [str(i) for i in range(1, 10)]

    # Downloads: a file name with model, image, layer, unit and method.
    with page.expect_download() as dl:
        page.click("[data-testid=download-projection]")
    name = dl.value.suggested_filename
    assert name.startswith(f"zfnet-imagenette_{image[:12]}_conv2_unit3_deconv-point") and name.endswith("_projection.png"), name
    # The feature map's colour bar: its own min..max, the layer summary's numbers for unit 3.
    s3 = next(x for x in httpx.get(f"{server}/api/images/{image}/layers/conv2").json()["units"] if x["unit"] == 3)
    page.wait_for_selector("[data-testid=map-legend]:not([hidden])")
    assert page.inner_text("[data-testid=map-legend] .legend-lo") == _fmt(s3["min"])
    assert page.inner_text("[data-testid=map-legend] .legend-hi") == _fmt(s3["max"])
    assert page.inner_text("[data-testid=units-legend] .legend-lo") == f"unit 3: {_fmt(s3['min'])}"
    assert f"min {_fmt(s3['min'])}, max {_fmt(s3['max'])}" in page.get_attribute("[data-testid=unit][data-unit='3']", "title")
    name, png = _download(page, "[data-testid=download-map]", tmp_path)
    assert name == f"zfnet-imagenette_{image[:12]}_conv2_unit3_map.png" and png.size == (224, 224)

    # The receptive-field crop of the point seed's projection: zoom enlarges it, contrast stretches it.
    page.wait_for_selector("[data-testid=projection-crop]:not([hidden])")
    assert "Receptive field" in page.inner_text("[data-testid=projection-crop]")
    zoom2 = _crop(page)
    _slide(page, "crop-zoom", 4)
    zoom4 = _crop(page)
    assert zoom4["w"] > zoom2["w"] and zoom4["h"] > zoom2["h"] and zoom4["caption"] != zoom2["caption"]
    _slide(page, "crop-contrast", 4)
    stretched = _crop(page)
    assert stretched["w"] == zoom4["w"] and stretched["std"] > zoom4["std"], (zoom4, stretched)
    assert "contrast 4×" in stretched["caption"]
    name, png = _download(page, "[data-testid=download-crop]", tmp_path)
    assert name == f"zfnet-imagenette_{image[:12]}_conv2_unit3_deconv-point_projection-crop.png"
    assert png.size == (stretched["w"], stretched["h"])

    # The top-9 (both 3x3 grids) and the evolution strip (the fixture's two snapshots) as PNGs.
    name, png = _download(page, "[data-testid=download-topk]", tmp_path)
    assert name == "zfnet-imagenette_conv2_unit3_deconv-point_top9.png" and png.size == (6 * 96 + 8, 3 * 96)
    _not_blank(tmp_path / name)
    evo = httpx.get(f"{server}/api/layers/conv2/units/3/evolution").json()
    page.wait_for_function("n => { const i = [...document.querySelectorAll('[data-testid=evolution-snapshot] img')];"
                           " return i.length === n && i.every(x => x.complete && x.naturalWidth > 0); }",
                           arg=len(evo["snapshots"]))
    name, png = _download(page, "[data-testid=download-evolution]", tmp_path)
    assert name == f"zfnet-imagenette_conv2_unit3_deconv-point_n{evo['images']}_evolution.png"
    assert png.size == (96 * len(evo["snapshots"]), 96 + 18)
    _not_blank(tmp_path / name)

    # The feature map takes arrow keys: a position from the keyboard.
    page.focus(".map-stack")
    page.keyboard.press("ArrowDown")
    page.wait_for_function("() => window.deconvlab.state().position !== null")
    # [ and ] keep focus off the body (and keep the unit when the layer has it).
    page.focus("[data-testid=layer-tab][aria-selected=true]")
    page.keyboard.press("]")
    page.wait_for_function("() => window.deconvlab.state().layer === 'conv3'")
    assert _state(page)["unit"] == 3
    assert page.evaluate("document.activeElement.dataset.layer") == "conv3"
    # Esc closes a panel and returns focus to its button. The filters panel: each filter's norm
    # and the dead count, as the API gives them.
    page.click("[data-testid=open-filters]")
    page.wait_for_selector("[data-testid=filters]:not([hidden])")
    fs = httpx.get(f"{server}/api/layers/conv1/filters").json()
    page.wait_for_function("n => document.querySelectorAll('[data-testid=filter-stat]').length === n", arg=len(fs["filters"]))
    shown = page.locator("[data-testid=filter-stat]").all_inner_texts()
    assert shown == [f"#{f['unit']} {_fmt(f['norm'])}{' dead' if f['dead'] else ''}" for f in fs["filters"]]
    assert f"{fs['dead']} dead (dead: {fs['rule']}" in page.inner_text("[data-testid=filters-summary]")
    name, png = _download(page, "[data-testid=download-filters]", tmp_path)
    assert name == "zfnet-imagenette_conv1_filters.png" and png.size[0] > 0
    page.keyboard.press("Escape")
    page.wait_for_selector("[data-testid=filters]", state="hidden")
    assert page.evaluate("document.activeElement.dataset.testid") == "open-filters"

    # A top-9 patch opens its data-set image here, projected from the patch's position.
    page.click("[data-testid=layer-tab][data-layer=conv2]")
    page.click("[data-testid=unit][data-unit='3']")
    _wait_gallery(page, 9)
    top = httpx.get(f"{server}/api/layers/conv2/units/3/top").json()["entries"]
    page.click("[data-testid=topk-patch][data-rank='1']")
    page.wait_for_function("p => JSON.stringify(window.deconvlab.state().position) === JSON.stringify(p)", arg=top[1]["position"])
    st = _state(page)
    assert st["layer"] == "conv2" and st["unit"] == 3 and st["seed"] == "point"
    # The image is that data-set image: its bytes, uploaded, have the id the app now shows.
    raw = httpx.get(f"{server}/api/dataset/images/{top[1]['image_index']}").content
    assert httpx.post(f"{server}/api/images", files={"file": ("x", raw)}).json()["image_id"] == st["image"]
    page.wait_for_selector("[data-testid=unit-box]:not([hidden])")
    assert page.url.startswith(server + "/#")  # still the app, not a bare image

    # A long occlusion can be cancelled.
    page.click("[data-testid=open-occlusion]")
    page.select_option("[data-testid=occ-size]", "16")
    page.select_option("[data-testid=occ-stride]", "4")
    page.click("[data-testid=occ-run]")
    page.click("[data-testid=occ-cancel]")
    page.wait_for_function("() => document.querySelector('[data-testid=occlusion-status]').textContent.startsWith('Cancelled')")
    assert page.locator("[data-testid=occ-cancel]").is_hidden()
    page.keyboard.press("Escape")

    # A link to an image this server lacks: in words, with the upload offered.
    page.goto(f"{server}/#image={'0' * 24}&layer=conv1")
    page.wait_for_selector("[data-testid=input-status].error")
    text = page.inner_text("[data-testid=input-status]")
    assert "not on this server" in text and "choose the picture again" in text


def test_a_click_is_answered_while_a_long_occlusion_runs(server, page, tmp_path):
    """Interactive requests go ahead of long jobs: with a 16 px, stride 4 occlusion running (2809
    forward passes on the 224 px ZFNet, 22 batches), a unit's projection comes back before the
    occlusion does. Checked by the order the two answers reach the page, not by their times."""
    from conftest import make_sample_image

    path = tmp_path / "fresh.png"  # an image no earlier test ran an occlusion on (stored results answer at once)
    make_sample_image(230, 210, seed=1414).save(path)
    page.goto(server + "/")
    page.wait_for_selector("[data-testid=layer-tab]")
    page.set_input_files("[data-testid=file-input]", str(path))
    page.wait_for_selector("[data-testid=prediction]")
    page.click("[data-testid=layer-tab][data-layer=conv2]")
    page.wait_for_selector("[data-testid=unit][data-unit='4']")
    page.evaluate("""() => { const order = window.__order = [];
        window.deconvlab.onChange((s) => {
          if (s.unit === 4 && s.projection.status === 'ok' && !order.includes('projection')) order.push('projection');
          if (s.occlusion.status === 'ok' && !order.includes('occlusion')) order.push('occlusion');
        }); }""")

    page.click("[data-testid=open-occlusion]")
    page.select_option("[data-testid=occ-size]", "16")
    page.select_option("[data-testid=occ-stride]", "4")
    page.click("[data-testid=occ-run]")
    page.wait_for_selector("[data-testid=occlusion-progress]:not([hidden])")
    page.wait_for_function("() => window.deconvlab.state().occlusion.status === 'loading'")
    page.wait_for_timeout(1000)  # not a threshold: only so the POST is surely on the server's worker first
    page.keyboard.press("Escape")  # the panel closes; the occlusion goes on
    page.click("[data-testid=unit][data-unit='4']")
    page.wait_for_function("() => window.__order.length === 2", timeout=180_000)
    assert page.evaluate("window.__order") == ["projection", "occlusion"]
    _wait_img(page, ".projection-img")


def _axe(page, label: str) -> list[str]:
    page.add_script_tag(path=str(AXE))
    res = page.evaluate("""() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations
        .filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', ')}`))""")
    return [f"{label}: {r}" for r in res]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_accessibility_axe(server, browser, scheme):
    if not AXE.exists():
        pytest.skip(f"{AXE} is absent: `make browser-deps` (npm ci --prefix tests/browser) installs axe-core")
    found: list[str] = []
    for label, viewport in (("desktop", {"width": 1400, "height": 1000}), ("phone", {"width": 390, "height": 844})):
        ctx = browser.new_context(viewport=viewport, color_scheme=scheme)
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(server + "/")
        pg.wait_for_selector("[data-testid=sample] img")
        found += _axe(pg, f"{scheme} {label} start")
        pg.click("[data-testid=sample] >> nth=0")
        pg.wait_for_selector("[data-testid=prediction]")
        pg.click("[data-testid=layer-tab][data-layer=conv2]")
        pg.click("[data-testid=unit][data-unit='1']")
        _wait_img(pg, ".projection-img")
        if label == "phone":  # the projection is brought into view after the tap (it starts below the fold)
            pg.wait_for_function("() => { const r = document.querySelector('[data-testid=projection]')"
                                 ".getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; }")
        found += _axe(pg, f"{scheme} {label} unit")
        if _served_graph_model(server):
            pg.select_option("[data-testid=model-select]", TINY_RESNET)
            pg.wait_for_selector("[data-testid=layer-more]")
            pg.click("[data-testid=layer-more] >> nth=1")
            found += _axe(pg, f"{scheme} {label} resnet picker")
        pg.click("[data-testid=open-occlusion]")
        found += _axe(pg, f"{scheme} {label} occlusion panel")
        ctx.close()
    assert not found, "serious or critical axe violations:\n" + "\n".join(found)
