"""Issue 19 against the real server: a server and ``cirlab index add`` writing one index, gallery files
that go bad on disk, hostile images and form fields, 405s, and a property-based fuzz of the
OpenAPI schema (schemathesis) checking that every reply matches the documented statuses and shapes."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from conftest import API_TOKEN, make_images
from PIL import Image, features

from cirlab.index import load_index

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def png(seed: int, size: int = 40) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def add(base: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(base + "/gallery", files={"image": (name, data, "image/png")}, headers=AUTH, timeout=120)


@pytest.fixture
def own_server(served, tmp_path):
    """A second server over a copy of the shared index, so this test's 40 images stay out of the others'."""
    import os
    import shutil

    from cirlab.serve.launch import start_server, stop_server

    _, shared_index, _, model = served
    index_dir = tmp_path / "index"
    shutil.copytree(shared_index, index_dir)
    cache = shared_index.parent / "cache"
    env = {**os.environ, "CIRLAB_API_TOKEN": API_TOKEN}
    proc, base = start_server(["--index", index_dir, "--model", model, "--cache", cache], env=env,
                              log=tmp_path / "server.log")
    yield base, index_dir, model, cache
    stop_server(proc)


def test_the_server_and_index_add_both_keep_their_images(own_server, tmp_path):
    """The sweep lost 9 of 12 images the server had confirmed while ``cirlab index add`` ran."""
    base, index_dir, model, cache = own_server
    folder = tmp_path / "more"
    make_images(folder, n=40, seed=11)
    cli = subprocess.Popen([sys.executable, "-m", "cirlab.cli", "index", "add", str(index_dir), str(folder), "--model",
                            str(model), "--cache", str(cache), "--quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    confirmed = []
    while cli.poll() is None or len(confirmed) < 12:
        r = add(base, f"both-{len(confirmed)}.png", png(100 + len(confirmed)))
        assert r.status_code == 201, r.text
        confirmed.append(r.json()["added"][0]["id"])
        time.sleep(0.05)
    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err
    index, manifest = load_index(index_dir)
    assert set(confirmed) <= set(index.row_of), "images the server confirmed are gone"
    assert {str(p.resolve()) for p in folder.iterdir()} <= set(index.ids), out  # outside the gallery: absolute ids
    assert len(index) == manifest["count"]
    # the server picks up the CLI's version for its searches too
    r = httpx.post(base + "/search", data={"text": "make it red", "k": "100"}, timeout=60)
    assert r.status_code == 200 and httpx.get(base + "/health").json()["index_size"] == len(index)


@pytest.fixture
def damaged_id(served):
    """A gallery image whose file is overwritten with garbage after it was indexed."""
    base, index_dir, _, _ = served
    r = add(base, "soon-damaged.png", png(7))
    image_id = r.json()["added"][0]["id"]
    path = next((index_dir / "files").glob(f"{image_id}.*"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    yield image_id, str(path)
    httpx.delete(base + f"/gallery/{image_id}", headers=AUTH)


@pytest.mark.parametrize("call", ["thumbnail", "composed", "image only"])
def test_a_gallery_file_gone_bad_gets_a_4xx_without_the_server_path(served, damaged_id, call):
    base, *_ = served
    image_id, path = damaged_id
    if call == "thumbnail":
        r = httpx.get(base + f"/images/{image_id}", params={"size": 64})
    else:
        data = {"image_id": image_id, **({"text": "make it red"} if call == "composed" else {})}
        r = httpx.post(base + "/search", data=data, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    assert path not in r.text and str(path).rsplit("/", 2)[0] not in r.text and image_id in r.json()["error"]


def test_an_image_id_search_without_text_works(served):
    base, *_ = served
    r = httpx.post(base + "/search", data={"image_id": "img2", "k": "3"}, timeout=60)
    assert r.status_code == 200 and r.json()["query"]["mode"] == "image"
    assert "img2" not in [x["id"] for x in r.json()["results"]]


def test_gallery_query_bounds_are_422(served):
    base, *_ = served
    for params in ({"random": 1, "seed": -1}, {"limit": 0}, {"offset": -3}, {"limit": 1000}):
        r = httpx.get(base + "/gallery", params=params)
        assert r.status_code == 422 and set(r.json()) == {"error"}, (params, r.text)


def test_405_says_what_is_allowed(served):
    base, *_ = served
    r = httpx.put(base + "/search")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and set(r.json()) == {"error"}
    r = httpx.delete(base + "/health")
    assert r.status_code == 405 and "GET" in r.headers["allow"]


def test_form_limits_are_413_and_422_not_400(served):
    base, *_ = served
    r = httpx.post(base + "/search", data={"text": "x" * (70 * 1024)},
                   files={"image": ("a.png", png(1), "image/png")})  # multipart: a part over 64 KB
    assert r.status_code == 413 and "64 KB" in r.json()["error"]
    fields = {f"f{i}": "v" for i in range(30)}
    r = httpx.post(base + "/search", data={**fields, "text": "red"}, files={"image": ("a.png", png(1), "image/png")})
    assert r.status_code == 422 and "malformed form" in r.json()["error"]


def test_a_malformed_avif_upload_is_415(served):
    base, *_ = served
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    from test_reliability import malformed_avifs

    data = malformed_avifs()[0]
    r = httpx.post(base + "/search", data={"text": "red"}, files={"image": ("x.avif", bytes(data), "image/avif")})
    assert r.status_code == 415 and "not a readable image" in r.json()["error"]
    r = httpx.post(base + "/gallery", files={"image": ("x.avif", bytes(data), "image/avif")}, headers=AUTH)
    assert r.status_code == 415


def test_the_openapi_schema_describes_every_reply(served):
    """schemathesis generates requests from /openapi.json (bounded, derandomised) for every operation and
    checks every reply: no 5xx, a documented status, content type and headers, and a body that matches
    the documented schema. Gallery changes go out with a wrong token, so the fuzz never changes the index."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import positive_data_acceptance

    base, *_ = served
    spec = httpx.get(base + "/openapi.json").json()
    search_body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert "image" in search_body["multipart/form-data"]["schema"]["properties"]
    assert {"401", "403", "413", "415", "422"} <= set(spec["paths"]["/gallery"]["post"]["responses"])
    assert "image/*" in spec["paths"]["/images/{image_id}"]["get"]["responses"]["200"]["content"]
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    failures, cases = [], []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if case.method in ("DELETE", "POST") and case.path == "/gallery" or case.method == "DELETE":
                case.headers = {**(case.headers or {}), "Authorization": "Bearer not-the-token"}
            cases.append(f"{case.method} {case.path}")
            # a schema cannot say that the bytes of a file field must decode as an image (415 otherwise), so
            # the "schema-valid data is accepted" check is left out where a request carries files
            files = case.media_type == "multipart/form-data"
            case.call_and_validate(base_url=base, timeout=60, excluded_checks=[positive_data_acceptance] if files else [])

        try:
            check()
        except Exception as e:
            failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:1500]}")
    print(f"schemathesis: {len(cases)} generated requests over {len(set(cases))} operations")
    assert not failures, "\n\n".join(failures)
    assert len({c.split()[0] + " " + c.split()[1].split("/")[1] for c in cases}) >= 7
    assert httpx.get(base + "/health").status_code == 200


FUZZ_EXAMPLES = 40
