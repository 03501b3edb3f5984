"""The browser parts of issues 15 and 16: the sanity strip, the compare panel, units from a region, Save page.

Debian's Chromium (Playwright) against a live ``deconvlab serve``: the server,
browser and page fixtures are ``test_browser``'s (imported, not copied: a small
random-weight ZFNet with two training snapshots, a tiny ResNet, a 12-image data
set and both top-k indexes; one server for this module). Each test checks the
page against what the API itself answers for the same request (the same scores,
the same matches, the same ranking), never against numbers written here.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from test_browser import AXE, _axe, _state, _wait_img, browser, page, pytestmark, server  # noqa: F401 (fixtures)

MODEL = "zfnet-imagenette"
N_IMAGES = 6  # data-set images for the correlations and CKA: small, so each job is a few dozen passes


def _open_unit(page, server: str, layer: str = "conv2", unit: int = 1) -> str:
    """A data-set sample as the image, then ``layer`` / ``unit``; the image id."""
    page.goto(server + "/")
    page.wait_for_selector("[data-testid=sample] img")
    page.click("[data-testid=sample] >> nth=0")
    page.wait_for_selector("[data-testid=prediction]")
    page.click(f"[data-testid=layer-tab][data-layer={layer}]")
    page.click(f"[data-testid=unit][data-unit='{unit}']")
    _wait_img(page, ".projection-img")
    return _state(page)["image"]


def _two(v) -> str:
    """The strip's number format for scores (two decimals, views/sanity.js num), "–" for null."""
    return "–" if v is None else f"{v:.2f}"


def test_sanity_strip_has_the_three_methods_and_the_servers_scores(server, page):
    image = _open_unit(page, server)
    page.wait_for_selector("[data-testid=sanity]:not([hidden])")
    assert "Spearman and SSIM" in page.inner_text("[data-testid=sanity-reading]")
    assert "Adebayo" in page.inner_text("[data-testid=sanity-finding]")
    page.click("[data-testid=sanity-run]")
    page.wait_for_function("() => window.deconvlab.state().sanity.status === 'ok'", timeout=60_000)
    rows = page.locator("[data-testid=sanity-row]")
    assert rows.count() == 3
    assert [rows.nth(i).get_attribute("data-method") for i in range(3)] == ["deconv", "guided", "backprop"]
    for method in ("deconv", "guided", "backprop"):
        # The stored check answers again at once: the numbers the page shows are these.
        api = httpx.get(f"{server}/api/images/{image}/layers/conv2/units/1/sanity",
                        params={"model": MODEL, "method": method, "mode": "cascading", "seed": 0}, timeout=60).json()
        cells = page.locator(f"[data-testid=sanity-row][data-method={method}] [data-testid=sanity-cell]")
        assert cells.count() == len(api["steps"]) >= 2  # the trained model and one step per randomised layer
        for k, s in enumerate(api["steps"][1:], start=1):
            text = cells.nth(k).inner_text()
            if s["seed_value"] > 0:
                assert f"ρ {_two(s['spearman'])}" in text and f"SSIM {_two(s['ssim'])}" in text, text
            else:
                assert "silent" in text
    page.wait_for_function("""() => [...document.querySelectorAll('[data-testid=sanity-cell] img')]
        .every(i => i.complete && i.naturalWidth > 0)""")
    assert page.locator("[data-testid=sanity-verdict]").inner_text().startswith("With every layer")
    # A new unit drops the strip (it was this unit's).
    page.click("[data-testid=unit][data-unit='2']")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=sanity-row]').length === 0")


def test_sanity_check_shows_progress_and_cancels(server, page):
    """The check's first request is held (never answered) in the browser: progress shows; Cancel aborts it,
    asks for no other method, and says so."""
    held = []
    page.route("**/units/*/sanity?*", lambda route: held.append(route))  # neither continued nor fulfilled
    _open_unit(page, server, "conv2", 5)
    # the request can leave after the progress shows (api.js's queue may hold it behind the unit's other
    # requests, and a request cancelled there is never sent): wait for it, or Cancel finds nothing in flight
    with page.expect_request("**/units/*/sanity?*"):
        page.click("[data-testid=sanity-run]")
    page.wait_for_selector("[data-testid=sanity-progress]:not([hidden])")
    assert "0 of 3 methods done" in page.inner_text("[data-testid=sanity-progress]")
    assert page.is_disabled("[data-testid=sanity-run]")
    page.click("[data-testid=sanity-cancel]")
    page.wait_for_selector("[data-testid=sanity-progress]", state="hidden")
    assert page.inner_text("[data-testid=sanity-status]").startswith("Cancelled")
    assert page.is_enabled("[data-testid=sanity-run]")
    page.wait_for_timeout(300)  # not a threshold: room for a wrongly started second method to show up
    assert len(held) == 1 and "method=deconv" in held[0].request.url
    assert page.evaluate("() => window.deconvlab.state().sanity.cancelled") is True


def _choose_target(page, target: str) -> None:
    page.click("[data-testid=open-compare]")
    page.wait_for_selector(f"[data-testid=compare-target] option[value='{target}']", state="attached")
    page.fill("[data-testid=compare-n]", str(N_IMAGES))
    page.press("[data-testid=compare-n]", "Enter")
    page.select_option("[data-testid=compare-target]", target)


def test_compare_with_the_model_itself_and_a_snapshot(server, page):
    image = _open_unit(page, server, "conv2", 1)
    _choose_target(page, MODEL)
    page.wait_for_selector("[data-testid=match] img", timeout=60_000)
    api = httpx.get(f"{server}/api/images/{image}/layers/conv2/units/1/matches",
                    params={"model": MODEL, "other": MODEL, "n": N_IMAGES, "k": 5}, timeout=60).json()
    shown = page.locator("[data-testid=match]")
    assert [int(shown.nth(i).get_attribute("data-unit")) for i in range(shown.count())] == \
        [m["unit"] for m in api["matches"]]
    if not api["constant"]:
        assert api["matches"][0]["unit"] == 1  # a unit's best match in its own model is itself (r = 1)
    # The best match's top 9 beside the unit's own (the model has a ready index).
    page.wait_for_selector("[data-testid=match-top-theirs] img")
    page.wait_for_selector("[data-testid=match-top-mine] img")
    # CKA heat map: one cell per pair of layers, 1 on the diagonal of a model with itself.
    page.wait_for_selector("[data-testid=cka-cell]", timeout=60_000)
    cka = httpx.get(f"{server}/api/compare/cka", params={"model": MODEL, "other": MODEL, "n": N_IMAGES}).json()
    cells = page.locator("[data-testid=cka-cell]").all_inner_texts()
    assert cells == [_two(v) for row in cka["cka"] for v in row]
    side = len(cka["layers"])
    assert [cells[i * side + i] for i in range(side)] == ["1.00"] * side
    # A training snapshot: matches with projections, and no top-9 (a snapshot has no index), said in words.
    page.select_option("[data-testid=compare-target]", f"{MODEL}@1")
    page.wait_for_function("() => window.deconvlab.state().matches.status === 'ok'"
                           " && window.deconvlab.state().matches.data.epoch === 1", timeout=60_000)
    snap = page.evaluate("() => window.deconvlab.state().matches.data")
    if snap["matches"]:
        page.wait_for_selector("[data-testid=match] img")
        assert "snapshot" in page.inner_text("[data-testid=match-top]")
    page.wait_for_function("() => window.deconvlab.state().cka.status === 'ok'", timeout=60_000)
    page.keyboard.press("Escape")
    page.wait_for_selector("[data-testid=compare]", state="hidden")


def test_a_box_dragged_on_the_input_lists_units_and_one_opens(server, page):
    image = _open_unit(page, server, "conv2", 0)
    _wait_img(page, ".input-img")
    fig = page.locator("[data-testid=input]").bounding_box()
    page.mouse.move(fig["x"] + fig["width"] * 0.2, fig["y"] + fig["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(fig["x"] + fig["width"] * 0.45, fig["y"] + fig["height"] * 0.6, steps=5)
    page.mouse.up()
    page.wait_for_selector("[data-testid=region-unit]")
    box = page.evaluate("() => window.deconvlab.state().region.box")
    api = httpx.post(f"{server}/api/images/{image}/layers/conv2/region", params={"model": MODEL},
                     json={"box": box, "k": min(20, _channels(server, "conv2"))}).json()
    shown = page.locator("[data-testid=region-unit]")
    assert [int(shown.nth(i).get_attribute("data-unit")) for i in range(shown.count())] == [u["unit"] for u in api["units"]]
    assert api["rule"] in page.inner_text("[data-testid=region-rule]")  # the rule, in the server's words
    assert page.locator("[data-testid=region-box]").is_visible()
    # The fields hold the box; clicking the second unit opens it at the position it was found at.
    assert [int(page.input_value(f"[data-testid=region-{k}]")) for k in ("top", "left", "bottom", "right")] == box
    second = api["units"][1]
    shown.nth(1).click()
    page.wait_for_function("u => window.deconvlab.state().unit === u", arg=second["unit"])
    assert _state(page)["position"] == second["position"]
    _wait_img(page, ".projection-img")
    # From the keyboard: type a box and press Enter; then move it with an arrow key on the box.
    for k, v in zip(("top", "left", "bottom", "right"), (0, 0, 40, 40)):
        page.fill(f"[data-testid=region-{k}]", str(v))
    page.press("[data-testid=region-right]", "Enter")
    page.wait_for_function("() => window.deconvlab.state().region.box.join() === '0,0,40,40'"
                           " && window.deconvlab.state().regionData.status === 'ok'")
    page.focus("[data-testid=region-box]")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => window.deconvlab.state().region.box.join() === '0,4,40,44'")
    # A bad box is said in words, before any request.
    page.fill("[data-testid=region-bottom]", "0")
    page.press("[data-testid=region-bottom]", "Enter")
    assert re.search(r"0 <= top < bottom", page.inner_text("[data-testid=region-status]"))


def _touch_drag(page, a: tuple[float, float], b: tuple[float, float]) -> None:
    """A finger's drag on the input as pointer events (pointerType touch), from a to b (fractions of the figure)."""
    page.evaluate("""([a, b]) => {
        const fig = document.querySelector('[data-testid=input]');
        const r = fig.getBoundingClientRect();
        const at = (p) => ({clientX: r.left + p[0] * r.width, clientY: r.top + p[1] * r.height});
        const ev = (type, p) => fig.dispatchEvent(new PointerEvent(type, {pointerType: 'touch', pointerId: 7,
            isPrimary: true, bubbles: true, cancelable: true, button: 0, ...at(p)}));
        ev('pointerdown', a); ev('pointermove', b); ev('pointerup', b); }""", [list(a), list(b)])


def test_a_touch_drag_draws_a_box_only_after_draw(server, page):
    _open_unit(page, server, "conv2", 0)
    _wait_img(page, ".input-img")
    _touch_drag(page, (0.1, 0.1), (0.5, 0.5))  # a finger on the picture scrolls the page: no box
    assert page.evaluate("() => window.deconvlab.state().region.box") is None
    page.click("[data-testid=region-draw]")
    assert page.get_attribute("[data-testid=region-draw]", "aria-pressed") == "true"
    _touch_drag(page, (0.1, 0.1), (0.5, 0.5))
    size = page.evaluate("() => window.deconvlab.state().models.data.models"
                         ".find(m => m.id === window.deconvlab.state().model).input_size")
    box = page.evaluate("() => window.deconvlab.state().region.box")
    assert box is not None and box[0] <= 0.1 * size + 1 and box[2] >= 0.5 * size - 1
    page.wait_for_selector("[data-testid=region-unit]")


def _channels(server: str, layer: str) -> int:
    models = httpx.get(f"{server}/api/models").json()["models"]
    return next(l["channels"] for m in models if m["id"] == MODEL for l in m["layers"] if l["name"] == layer)


def test_save_page_downloads_the_units_report(server, page, tmp_path):
    image = _open_unit(page, server, "conv2", 3)
    page.click("[data-testid=method-guided]")
    fmap = page.locator("[data-testid=feature-map]").bounding_box()
    page.mouse.click(fmap["x"] + fmap["width"] * 0.5, fmap["y"] + fmap["height"] * 0.5)
    page.wait_for_function("() => window.deconvlab.state().position !== null")
    view = _state(page)
    with page.expect_download() as dl:
        page.click("[data-testid=save-page]")
    assert dl.value.suggested_filename == f"{MODEL}-conv2-3.html"
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(str(path))
    html = path.read_text()
    m = re.search(r'<script type="application/json" id="deconvlab-provenance">(.*?)</script>', html, re.S)
    assert m, "no provenance block in the saved page"
    prov = json.loads(m.group(1))
    assert prov["model"]["name"] == MODEL
    assert (prov["layer"], prov["unit"], prov["method"]) == ("conv2", 3, "guided")
    assert prov["position"] == view["position"]
    assert prov["image"]["sha256"].startswith(image)


def test_accessibility_axe_new_panels(server, browser):  # noqa: F811 (the imported fixture)
    if not AXE.exists():
        pytest.skip(f"{AXE} is absent: `make browser-deps` (npm ci --prefix tests/browser) installs axe-core")
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    _open_unit(pg, server, "conv2", 1)
    pg.click("[data-testid=sanity-run]")
    pg.wait_for_function("() => window.deconvlab.state().sanity.status === 'ok'", timeout=60_000)
    for k, v in zip(("top", "left", "bottom", "right"), (10, 10, 60, 60)):
        pg.fill(f"[data-testid=region-{k}]", str(v))
    pg.press("[data-testid=region-right]", "Enter")
    pg.wait_for_selector("[data-testid=region-unit]")
    _choose_target(pg, MODEL)
    pg.wait_for_selector("[data-testid=cka-cell]", timeout=60_000)
    pg.wait_for_selector("[data-testid=match]", timeout=60_000)
    found = _axe(pg, "sanity strip, region list, compare panel")
    ctx.close()
    assert not found, "serious or critical axe violations:\n" + "\n".join(found)
