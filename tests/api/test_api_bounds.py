"""Bounded bodies and answers, strict request types, real 405s and an honest OpenAPI document (issue 12)."""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient

from deconvlab.api import Settings, create_app
from test_api_routes import png_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAP = 4000


@pytest.fixture(scope="module")
def client(small_models_dir, tmp_path_factory):
    front = tmp_path_factory.mktemp("front")  # a browser app at "/", as the real server has
    (front / "index.html").write_text("<!doctype html><title>deconvlab</title>")
    settings = Settings(models=str(small_models_dir), state_dir=str(tmp_path_factory.mktemp("state")), data="",
                        device="cpu", frontend_dir=str(front), max_body_bytes=CAP)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def image_id(client, sample_image):
    r = client.post("/api/images", files={"file": ("s.png", png_of(sample_image.resize((64, 50))), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()["image_id"]


def test_a_json_body_over_the_cap_is_413_however_it_comes(client, image_id):
    url = f"/api/images/{image_id}/occlusion"
    body = '{"size": 112, "stride": 112, "layer": "conv1"' + " " * CAP + "}"
    r = client.post(url, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"detail": f"request body too large: expected at most {CAP} bytes, got more than {CAP}"}

    def chunked():  # no Content-Length: counted as it streams in
        yield b'{"size": 112, "stride": 112, '
        for _ in range(10):
            yield b" " * 1000
        yield b'"layer": "conv1"}'
    r = client.post(url, content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body too large" in r.json()["detail"]
    small = client.post(url, content='{"size": 112, "stride": 112, "layer": "conv1"}' + " " * (CAP - 200),
                        headers={"content-type": "application/json"})
    assert small.status_code == 200, small.text  # under the cap: the same body is read as usual
    assert small.json()["grid"] == [2, 2]


def test_details_never_echo_an_input_in_full(client, image_id):
    huge = "9" * 3_000
    r = client.post(f"/api/images/{image_id}/occlusion", json={"size": "x" * 3_000, "layer": "conv1"})
    assert r.status_code == 422
    d = r.json()["detail"]
    assert d.startswith("size: Input should be a valid integer, got 'xxx") and d.endswith("…") and len(d) < 200
    for url, status in [(f"/api/images/{image_id}/layers/{'c' * 3_000}", 404),
                        (f"/api/images/{'f' * 3_000}", 404),
                        (f"/api/images/{image_id}/predictions?model={'m' * 3_000}", 404),
                        (f"/api/images/{image_id}/predictions?k={huge}", 200),
                        (f"/api/occlusions/{'0' * 3_000}/activation.png", 404)]:
        r = client.get(url)
        d = r.json()["detail"] if r.status_code != 200 else ""
        if status == 200:  # k: a 3,000-digit integer is parsed, then refused by range
            assert r.status_code == 422 and len(r.json()["detail"]) < 200, url[:60]
            continue
        assert r.status_code == status and "…" in d and len(d) < 400, (url[:60], d[:100])


def test_request_models_are_strict(client, image_id):
    url = f"/api/images/{image_id}/occlusion"
    for field, value in [("size", True), ("stride", False), ("size", "32"), ("class_index", True), ("size", 32.0)]:
        r = client.post(url, json={"size": 112, "stride": 112, "layer": "conv1", field: value})
        assert r.status_code == 422, (field, value, r.text)
        assert r.json()["detail"] == f"{field}: Input should be a valid integer, got {value!r}"


def test_malformed_json_says_so_and_where(client, image_id):
    r = client.post(f"/api/images/{image_id}/occlusion", content=b'{"size": 32,\n  "stride": }',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json() == {"detail": "the body is not valid JSON: Expecting value at line 2, column 13"}


def test_405_lists_the_routes_real_methods_and_unknown_api_paths_are_json_404(client, image_id):
    r = client.get(f"/api/images/{image_id}/occlusion")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "POST" in r.json()["detail"]
    r = client.post("/api/health")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = client.delete(f"/api/images/{image_id}")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = client.get("/api/no/such/route")
    assert r.status_code == 404 and r.json()["detail"].startswith("Not Found: no API route at '/api/no/such/route'")
    assert client.get("/").status_code == 200  # the browser app is still served


def test_openapi_describes_the_errors_and_bounds(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and schemas["Error"]["properties"]["detail"]["type"] == "string"
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    for (method, path), op in ops.items():
        for status, resp in op["responses"].items():
            if status.startswith(("4", "5")):
                assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        if "{" in path:
            assert "404" in op["responses"], (method, path)
    assert "413" in ops[("post", "/api/images/{image_id}/occlusion")]["responses"]
    assert "Retry-After" in ops[("get", "/api/images/{image_id}/predictions")]["responses"]["429"]["headers"]

    def param(method, path, name):
        p = next(p for p in ops[(method, path)]["parameters"] if p["name"] == name)["schema"]
        return next((s for s in p.get("anyOf", []) if s.get("type") == "integer"), p)

    unit = "/api/images/{image_id}/layers/{layer}/units/{unit}"
    size = param("get", unit + "/map.png", "size")
    assert (size["type"], size["default"], size["minimum"], size["maximum"]) == ("integer", 112, 8, 1024)
    assert param("get", unit, "unit")["minimum"] == 0
    assert param("get", "/api/images/{image_id}/predictions", "k")["minimum"] == 1
    assert param("get", "/api/dataset/samples", "n")["maximum"] == 200
    assert param("get", "/api/layers/{layer}/units/{unit}/evolution", "n")["maximum"] == 1000
    body = schemas["OcclusionRequest"]["properties"]
    assert body["size"]["minimum"] == 1 and body["stride"]["minimum"] == 1 and body["size"]["maximum"] == 224


def test_an_empty_model_name_is_unknown_not_the_default(client, image_id):
    # schemathesis found ?model=none&model= answered as the default model (the last value, "", read as none given)
    r = client.get(f"/api/images/{image_id}/predictions", params={"model": ""})
    assert r.status_code == 404 and r.json()["detail"].startswith("unknown model: ''")
    assert client.get(f"/api/images/{image_id}/predictions").status_code == 200
