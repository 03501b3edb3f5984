"""Issue 13 in the browser: a one-channel net on 28x28 inputs works end to end, through the server and
the app.

The net: a student's CNN (conv, F.relu, max pool, twice, then linear; one input channel, 10 classes),
seeded, exported with ``torch.export`` to a ``.pt2`` program, registered by the real command
(``deconvlab register tiny-gray --arch export --weights g.pt2 --input-size 28 --mean 0.1307 --std
0.3081``) into a tmp models folder and served alone (``DECONVLAB_SERVE_MODELS``, what ``serve --model``
sets) by a live ``deconvlab serve``, without a data set. The test uploads a colour picture (the server
turns it grey), reads the predictions the page shows against the API's, picks a layer and a unit, and
sees its projection and feature map; the deep link comes back on reload.

The export costs ~20 s of torch.export tracing on a busy machine; that, and the server's start, is
most of this module's time.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import live_server, make_sample_image
from test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, _has_serve, _not_blank, _state, _wait_img

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: `make browser-deps` installs it"),
]

NAME = "tiny-gray"


class Gray(nn.Module):
    """Two conv + ReLU + 2x2 max pool stages over one channel, then a linear classifier (MNIST's shape)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def gray_server(tmp_path_factory):
    if os.environ.get("DECONVLAB_TEST_SERVER"):
        pytest.skip("this module serves its own one-channel model; DECONVLAB_TEST_SERVER drives another server")
    if not _has_serve():
        pytest.skip("`deconvlab serve` has not landed")
    from deconvlab.cli.main import main

    root = tmp_path_factory.mktemp("gray")
    torch.manual_seed(0)
    with torch.no_grad():
        net = Gray().eval()
        ep = torch.export.export(net, (torch.randn(2, 1, 28, 28),),
                                 dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(ep, str(root / "gray.pt2"))
    models = root / "models"
    models.mkdir()
    (models / "registry.json").write_text(json.dumps({"default": NAME, "models": {}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECONVLAB_MODELS", str(models))
        assert main(["register", NAME, "--arch", "export", "--weights", str(root / "gray.pt2"),
                     "--input-size", "28", "--mean", "0.1307", "--std", "0.3081"]) == 0
    env = {**os.environ, "DECONVLAB_MODELS": str(models), "DECONVLAB_SERVE_MODELS": NAME, "DECONVLAB_DATA": "",
           "DECONVLAB_CACHE": str(root / "cache"), "DECONVLAB_STATE_DIR": str(root / "state"),
           "DECONVLAB_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    with live_server(env, root, timeout=240) as base:
        yield base


@pytest.fixture(scope="module")
def gray_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = b.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        b.close()
        assert not errors, f"uncaught errors in the page: {errors}"


def test_one_channel_28px_net_upload_predict_unit_projection(gray_server, gray_page, tmp_path):
    server, page = gray_server, gray_page
    (model,) = httpx.get(f"{server}/api/models").json()["models"]
    assert (model["id"], model["input_size"], len(model["classes"])) == (NAME, 28, 10)
    spatial = [l for l in model["layers"] if len(l["shape"]) == 3]
    layer = next(l for l in spatial if l["shape"][1] == 14 and l["type"].startswith("relu"))  # the second ReLU

    page.goto(server + "/")
    page.wait_for_selector("[data-testid=layer-tab]")
    path = tmp_path / "colour.png"
    make_sample_image(96, 80, seed=28).save(path)  # RGB in; the model sees one grey channel
    page.set_input_files("[data-testid=file-input]", str(path))
    page.wait_for_function("() => document.querySelectorAll('[data-testid=prediction]').length === 5")
    image = _state(page)["image"]
    api = httpx.get(f"{server}/api/images/{image}/predictions", params={"k": 5}).json()["predictions"]
    assert page.locator("[data-testid=prediction] .pred-label").all_inner_texts() == \
        [f"{i + 1}. {p['label']}" for i, p in enumerate(api)]
    _wait_img(page, ".input-img")
    assert page.evaluate("document.querySelector('.input-img').naturalWidth") == 28

    # A layer and a unit: its feature map (14x14) and its projection to the 28x28 input.
    page.click(f"[data-testid=layer-tab][data-layer='{layer['name']}']")
    page.wait_for_function("n => document.querySelectorAll('[data-testid=unit]').length === n", arg=layer["channels"])
    page.click("[data-testid=unit][data-unit='1']")
    _wait_img(page, ".projection-img")
    _wait_img(page, "[data-testid=feature-map]")
    assert page.evaluate("document.querySelector('.projection-img').naturalWidth") == 28
    u = httpx.get(f"{server}/api/images/{image}/layers/{layer['name']}/units/1").json()
    page.wait_for_function("() => /row \\d+, column \\d+/.test(document.querySelector('[data-testid=unit-status]').textContent)")
    assert f"row {u['position'][0]}, column {u['position'][1]} of its 14×14 map" in page.inner_text("[data-testid=unit-status]")
    page.wait_for_selector("[data-testid=unit-box]:not([hidden])")
    page.locator("[data-testid=projection]").screenshot(path=str(tmp_path / "gray-projection.png"))
    _not_blank(tmp_path / "gray-projection.png", min_std=2.0)

    # The deep link comes back whole.
    deep = page.url
    assert f"model={NAME}" in deep and f"layer={layer['name']}" in deep and "unit=1" in deep
    page.reload()
    _wait_img(page, ".projection-img")
    assert page.url == deep and _state(page)["unit"] == 1 and _state(page)["layer"] == layer["name"]
