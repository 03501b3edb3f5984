"""The unit report (issue 16, "Share") as a saved file in Debian's Chromium: nothing leaves the page.

The server is test_browser.py's (its fixtures imported, not copied): a small random ZFNet with its
top-k index, and ``tiny-resnet`` (a graph net without training snapshots). A report is fetched from
``GET .../units/{unit}/report.html``, written to a file and opened from ``file://`` with every request
recorded (Playwright's ``request`` event) and every one not of the file itself refused: the only
request is the file. Every section has its heading, every image decodes (``naturalWidth`` > 0) and
has alt text, the provenance block in the DOM names the sha256 of the uploaded bytes and of the
weights (``model_sha256`` of the same seeded ZFNet made here), and the graph net's report, with no
evolution snapshots, no occlusion and no sanity check, is still a whole page that says what is absent.
axe-core finds no serious or critical violation (the page's CSP is bypassed for axe's script only).
"""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from test_browser import (AXE, CHROMIUM_ARGS, TIMEOUT_MS, TINY_RESNET, _axe, _served_graph_model,  # noqa: F401
                          _upload_image, browser, pytestmark, server)

SECTIONS = ["input", "projections", "feature-map", "top", "evolution", "occlusion", "sanity", "provenance"]


def _report(server: str, tmp_path, model: str | None, layer: str, unit: int, path: str, **params) -> tuple:
    """Upload the test picture, fetch the unit's report into ``tmp_path/<path>``; (file, uploaded bytes)."""
    body = _upload_image(tmp_path).read_bytes()
    q = {"model": model} if model else {}
    image_id = httpx.post(f"{server}/api/images", params=q, files={"file": ("x.jpg", body, "image/jpeg")}).json()
    r = httpx.get(f"{server}/api/images/{image_id['image_id']}/layers/{layer}/units/{unit}/report.html",
                  params={**q, **params}, timeout=120)
    assert r.status_code == 200, r.text
    out = tmp_path / path
    out.write_bytes(r.content)
    return out, body


def _open_offline(browser, file, bypass_csp: bool = False):
    """The file in a fresh context; every request recorded, any but the file's own aborted."""
    ctx = browser.new_context(viewport={"width": 1300, "height": 900}, bypass_csp=bypass_csp)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    seen: list[str] = []
    page.on("request", lambda req: seen.append(req.url))
    own = file.as_uri()
    ctx.route("**/*", lambda route: route.continue_() if route.request.url == own else route.abort())
    page.goto(own)
    page.wait_for_load_state("load")
    return ctx, page, seen


def _check_page(page, file) -> dict:
    """Every section with its heading, every image decoded with alt text; the provenance JSON."""
    got = page.evaluate("""() => ({
        sections: [...document.querySelectorAll('section[data-section]')].map(s => [s.dataset.section,
            s.dataset.state, (s.querySelector('h2') || {}).textContent || '',
            (s.querySelector('.dl-absent') || {}).textContent || '']),
        images: [...document.images].map(i => [i.complete && i.naturalWidth > 0, i.alt, i.src.slice(0, 22)]),
        h1: document.querySelectorAll('h1').length,
        provenance: JSON.parse(document.getElementById('deconvlab-provenance').textContent)})""")
    assert [s[0] for s in got["sections"]] == SECTIONS and got["h1"] == 1
    for key, state, heading, absent in got["sections"]:
        assert heading.strip(), key
        assert (state == "absent") == bool(absent.strip()), (key, state, absent)
    assert got["images"] and all(ok and alt and src == "data:image/png;base64," for ok, alt, src in got["images"])
    return got


def test_saved_report_opens_offline_with_every_part(server, browser, tmp_path):
    from conftest import small_zfnet_module
    from deconvlab.index import model_sha256
    from deconvlab.net import Net

    file, body = _report(server, tmp_path, None, "conv2", 1, "zfnet.html", method="guided")
    ctx, page, seen = _open_offline(browser, file)
    try:
        got = _check_page(page, file)
        assert seen == [file.as_uri()], f"requests besides the file itself: {seen}"
        states = {s[0]: s[1] for s in got["sections"]}
        assert states["top"] == "present" and states["projections"] == "present"
        assert len([i for i in got["images"]]) >= 5 + 2 * 3  # input, 3 projections, map, top patches + projections
        p = got["provenance"]
        assert p["image"]["sha256"] == hashlib.sha256(body).hexdigest()
        if not __import__("os").environ.get("DECONVLAB_TEST_SERVER"):  # our server: we know its weights
            assert p["model"]["weights_sha256"] == model_sha256(Net(*small_zfnet_module()))
        shown = page.locator("[data-key=weights_sha256]").inner_text()
        assert shown == p["model"]["weights_sha256"] and len(shown) == 64
        assert page.locator("[data-key=image_sha256]").inner_text() == p["image"]["sha256"]
        assert (p["layer"], p["unit"], p["method"]) == ("conv2", 1, "guided")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    finally:
        ctx.close()


def test_graph_net_report_says_what_is_absent(server, browser, tmp_path):
    m = _served_graph_model(server)
    if m is None:
        pytest.skip(f"this server does not serve {TINY_RESNET}")
    layer = "layer2.0" if any(d["name"] == "layer2.0" for d in m["layers"]) else m["layers"][-2]["name"]
    file, body = _report(server, tmp_path, TINY_RESNET, layer, 2, "resnet.html")
    ctx, page, seen = _open_offline(browser, file)
    try:
        got = _check_page(page, file)
        assert seen == [file.as_uri()], f"requests besides the file itself: {seen}"
        absent = {s[0]: s[3] for s in got["sections"] if s[1] == "absent"}
        assert {"evolution", "occlusion", "sanity"} <= set(absent), absent  # (its index: built or being built)
        assert "no training snapshots" in absent["evolution"] and "no occlusion maps" in absent["occlusion"]
        p = got["provenance"]
        assert p["model"]["engine"] == "graph" and p["image"]["sha256"] == hashlib.sha256(body).hexdigest()
        assert json.dumps(p["sections"]).count("absent") == len(absent)
    finally:
        ctx.close()


def test_report_accessibility_axe(server, browser, tmp_path):
    if not AXE.exists():
        pytest.skip(f"{AXE} is absent: `make browser-deps` (npm ci --prefix tests/browser) installs axe-core")
    file, _ = _report(server, tmp_path, None, "conv3", 0, "axe.html")
    ctx = browser.new_context(viewport={"width": 1300, "height": 900}, bypass_csp=True)  # axe is a script
    try:
        page = ctx.new_page()
        page.goto(file.as_uri())
        found = _axe(page, "report")
        assert not found, "serious or critical axe violations:\n" + "\n".join(found)
    finally:
        ctx.close()


def test_evolution_strip_once_scanned(server, browser, tmp_path):
    evo = httpx.get(f"{server}/api/layers/conv2/units/1/evolution", params={"n": 12}, timeout=300)
    if evo.status_code == 404:
        pytest.skip("this server's default model has no training snapshots")
    assert evo.status_code == 200, evo.text
    snapshots = evo.json()["snapshots"]
    file, _ = _report(server, tmp_path, None, "conv2", 1, "evolution.html")
    ctx, page, seen = _open_offline(browser, file)
    try:
        got = _check_page(page, file)
        assert seen == [file.as_uri()]
        assert dict((s[0], s[1]) for s in got["sections"])["evolution"] == "present"
        cells = page.evaluate("() => [...document.querySelectorAll('[data-section=evolution] img')].map(i => i.alt)")
        assert len(cells) == len(snapshots)
        for alt, s in zip(cells, snapshots):  # the route's numbers, cell by cell
            assert alt.startswith(f"epoch {s['epoch']}:") and f"{s['value']:.4g}" in alt
            assert f"data-set image {s['image_index']}" in alt
    finally:
        ctx.close()
