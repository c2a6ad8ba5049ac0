"""The HTTP API against a real uvicorn on 127.0.0.1: composed, text-only and image-only search,
gallery files and thumbnails, limits and refusals (every error JSON, the server still up),
token-protected gallery changes saved atomically to the index on disk."""

import io
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import API_TOKEN
from PIL import Image

from cirlab.index import load_index, read_manifest


def png_bytes(color=(200, 30, 30), size=48) -> bytes:
    buf = io.BytesIO()
    arr = np.full((size, size, 3), 255, np.uint8)
    arr[8:40, 8:40] = color
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side=30_000) -> bytes:
    """A valid PNG header and one compressed chunk claiming side x side pixels: tiny file, huge image."""
    def chunk(kind, data):
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    idat = zlib.compress(row * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def search(base, data=None, files=None):
    return httpx.post(base + "/search", data=data or {}, files=files, timeout=60)


def test_health_and_info(served):
    base, index_dir, _, _ = served
    assert httpx.get(base + "/health").json() == {"status": "ok", "index_size": 16}
    info = httpx.get(base + "/info").json()
    assert info["model"]["method"] == "sum" and info["model"]["text_search"] is True
    assert info["index"] == {"size": 16, "backend": "exact", "dim": 512}
    assert info["encoders"]["image"].startswith("efficientnet_lite0") and info["gallery_changes"] is True
    assert "/search" in httpx.get(base + "/openapi.json").json()["paths"]


def test_composed_search_with_a_gallery_reference(served):
    base, *_ = served
    r = search(base, {"image_id": "img3", "text": "make it look like shape 5", "k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["mode"] == "composed" and len(body["results"]) == 5
    ids = [x["id"] for x in body["results"]]
    assert "img3" not in ids  # the reference is left out of its own results
    scores = [x["score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    first = body["results"][0]
    assert set(first) == {"id", "score", "metadata", "name", "image_url", "thumbnail_url"}
    assert "path" not in first["metadata"]  # no server path leaves the server
    thumb = httpx.get(base + first["thumbnail_url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_uploaded_reference_text_only_and_image_only(served):
    base, _, ds, _ = served
    upload = (ds / "images" / "img2.png").read_bytes()
    r = search(base, {"text": "make it look like shape 1", "k": "3"}, files={"image": ("ref.png", upload, "image/png")})
    assert r.status_code == 200 and r.json()["query"]["mode"] == "composed" and len(r.json()["results"]) == 3
    text = search(base, {"text": "shape number 4", "k": "16"})
    assert text.status_code == 200 and text.json()["query"]["mode"] == "text"
    assert len(text.json()["results"]) == 16
    alike = search(base, {"k": "4"}, files={"image": ("ref.png", upload, "image/png")})
    assert alike.json()["query"]["mode"] == "image"
    assert alike.json()["results"][0]["id"] == "img2"  # the same picture is the closest to itself
    assert alike.json()["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_gallery_files_are_the_only_files_served(served):
    base, _, ds, _ = served
    r = httpx.get(base + "/images/img7")
    assert r.status_code == 200 and r.content == (ds / "images" / "img7.png").read_bytes()
    for bad in ("/images/..%2F..%2Fsum.pt", "/images/../../etc/passwd", "/images/%2Fetc%2Fpasswd", "/images/nope"):
        r = httpx.get(base + bad)
        assert r.status_code == 404 and "error" in r.json(), bad
    r = httpx.get(base + "/images/img7?size=33")
    assert r.status_code == 422 and "size must be one of" in r.json()["error"]
    page = httpx.get(base + "/gallery", params={"q": "shape 1", "limit": 50}).json()
    assert page["total"] == 7 and {x["id"] for x in page["items"]} == {"img1", *{f"img{i}" for i in range(10, 16)}}
    pick = httpx.get(base + "/gallery", params={"random": 1, "limit": 5, "seed": 3}).json()
    assert len(pick["items"]) == 5 and pick["total"] == 16


@pytest.mark.parametrize("data,files,status,message", [
    ({"text": "x" * 1001}, None, 422, "limit is 1000"),
    ({"text": "red", "k": "0"}, None, 422, "k must be between 1 and 100"),
    ({"text": "red", "k": "many"}, None, 422, "k must be an integer"),
    ({"k": "3"}, None, 422, "send a text, a reference"),
    ({"text": "red", "image_id": "nope"}, None, 404, "no gallery image with id 'nope'"),
    ({"text": "red", "method": "mffm"}, None, 422, "serves method 'sum', not 'mffm'"),
    ({"text": "red"}, {"image": ("a.txt", b"hello, not an image", "text/plain")}, 415, "not a readable image"),
    ({"text": "red"}, {"image": ("big.png", b"\0" * (1024 * 1024 + 70_000), "image/png")}, 413, "limited to 1 MB"),
    ({"text": "red"}, {"image": ("bomb.png", bomb_png(), "image/png")}, 413, "pixel"),
    ({"text": "red", "image_id": "img1"}, {"image": ("r.png", png_bytes(), "image/png")}, 422, "not both"),
])
def test_bad_requests_get_a_json_error_and_the_server_stays_up(served, data, files, status, message):
    base, *_ = served
    r = search(base, data, files)
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and set(r.json()) - {"field"} == {"error"}
    assert r.json().get("field") in (None, *data)  # a refused field is named as data too
    assert httpx.get(base + "/health").status_code == 200


def test_a_json_body_and_a_chunked_oversized_body_are_refused(served):
    base, *_ = served
    r = httpx.post(base + "/search", json={"text": "red"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]

    def chunks():  # a well-formed form with a 2.6 MB file, sent without Content-Length: refused while reading
        yield (b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(40):
            yield b"x" * 65536
        yield b"\r\n--zz--\r\n"
    r = httpx.post(base + "/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and "upload limit" in r.json()["error"]
    r = httpx.post(base + "/search", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code in (400, 422) and set(r.json()) == {"error"}


def test_concurrent_searches_all_succeed(served):
    base, *_ = served
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: search(base, {"image_id": f"img{i % 16}", "text": "make it bigger"}).status_code,
                              range(24)))
    assert codes == [200] * 24


def test_gallery_changes_need_the_token_and_are_saved_atomically(served):
    base, index_dir, _, _ = served
    files = {"image": ("new red thing.png", png_bytes((250, 0, 0)), "image/png")}
    assert httpx.post(base + "/gallery", files=files).status_code == 401
    r = httpx.post(base + "/gallery", files=files, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "API token" in r.json()["error"]
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    before = read_manifest(index_dir)[0]["count"]
    r = httpx.post(base + "/gallery", files=files, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    new_id = r.json()["added"][0]["id"]
    assert new_id.startswith("new-red-thing-") and r.json()["size"] == before + 1
    on_disk, manifest = load_index(index_dir)
    assert manifest["count"] == before + 1 and new_id in on_disk.row_of
    alike = search(base, {"k": "1"}, files={"image": ("q.png", png_bytes((250, 0, 0)), "image/png")}).json()
    assert alike["results"][0]["id"] == new_id
    assert httpx.get(base + f"/images/{new_id}").status_code == 200
    bad = httpx.post(base + "/gallery", files={"image": ("x.png", b"garbage", "image/png")}, headers=auth)
    assert bad.status_code == 415 and load_index(index_dir)[1]["count"] == before + 1
    r = httpx.delete(base + f"/gallery/{new_id}", headers=auth)
    assert r.status_code == 200 and r.json()["size"] == before
    assert new_id not in load_index(index_dir)[0].row_of
    hits = search(base, {"k": "16"}, files={"image": ("q.png", png_bytes((250, 0, 0)), "image/png")}).json()
    assert new_id not in {x["id"] for x in hits["results"]}
    assert httpx.delete(base + "/gallery/nope", headers=auth).status_code == 404
    assert httpx.delete(base + "/gallery/img1").status_code == 401


def test_without_a_configured_token_gallery_changes_are_off(served, tmp_path):
    import uvicorn

    from cirlab.api import Pipeline
    from cirlab.serve.app import create_app
    from cirlab.serve.service import SearchService
    from conftest import free_port

    base, index_dir, _, model = served
    service = SearchService(Pipeline.load(model, index_dir.parent / "cache"), index_dir, api_token=None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
        r = httpx.post(f"http://127.0.0.1:{port}/gallery", files={"image": ("a.png", png_bytes(), "image/png")},
                       headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert r.status_code == 403 and "CIRLAB_API_TOKEN" in r.json()["error"]
        assert httpx.get(f"http://127.0.0.1:{port}/info").json()["gallery_changes"] is False
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("what", ["model", "index"])
def test_serve_refuses_a_missing_model_or_index_in_one_line(served, tmp_path, what):
    _, index_dir, _, model = served
    args = {"model": [str(tmp_path / "none.pt"), str(index_dir)], "index": [str(model), str(tmp_path / "none")]}[what]
    r = subprocess.run([sys.executable, "-m", "cirlab.cli", "serve", "--model", args[0], "--index", args[1],
                        "--port", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert ("no model at" if what == "model" else "is not a cirlab index") in r.stderr


def test_every_search_answers_with_server_timing_and_info_shows_rolling_percentiles(served):
    base, *_ = served
    r = search(base, {"text": "make it look like shape 2", "k": "3"}, {"image": ("ref.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    timing = dict(part.strip().split(";dur=") for part in r.headers["Server-Timing"].split(","))
    assert set(timing) == {"decode", "queue", "encode", "fuse", "search", "total"}
    assert all(float(v) >= 0 for v in timing.values()) and float(timing["decode"]) > 0
    assert float(timing["total"]) >= float(timing["encode"]) + float(timing["search"])
    r = search(base, {"image_id": "img2", "text": "make it look like shape 5", "k": "3"})
    assert "encode;dur=" in r.headers["Server-Timing"]
    latency = httpx.get(base + "/info").json()["latency_ms"]
    assert latency["searches"] >= 2 and latency["total"]["p50"] <= latency["total"]["p99"]
    assert {"p50", "p90", "p99"} == set(latency["encode"]) and latency["mean_batch"] >= 1


def test_batched_answers_equal_one_by_one_answers(served):
    """Concurrent searches of every kind, gathered into batches (a 200 ms window), answer exactly what the same
    searches answer one at a time; a bad reference in a batch fails only its own search."""
    from cirlab.api import Pipeline, Query
    from cirlab.serve.queries import Search
    from cirlab.serve.service import SearchService, ServiceError

    _, index_dir, ds, model = served
    pipe = Pipeline.load(model, index_dir.parent / "cache")
    upload = Image.open(io.BytesIO(png_bytes((30, 30, 200))))
    queries = [dict(text=f"make it look like shape {n % 7}", image_id=f"img{n}") for n in range(8)]
    queries += [dict(text="make it look like shape 3", image=upload), dict(text="shape 4"),
                dict(text=None, image_id="img5"), dict(text="make it red", image=upload)]
    one_by_one = SearchService(pipe, index_dir, batch_window_ms=0, max_batch=1)
    alone = [one_by_one.search(k=5, **q) for q in queries]
    one_by_one.close()
    batched = SearchService(pipe, index_dir, batch_window_ms=200, max_batch=32)
    with ThreadPoolExecutor(len(queries)) as pool:
        together = list(pool.map(lambda q: batched.search(k=5, **q), queries))
    assert batched.queries.latency()["mean_batch"] > 1  # the searches really went through in batches
    for a, b in zip(alone, together):
        assert [x["id"] for x in a["results"]] == [x["id"] for x in b["results"]]
        assert np.allclose([x["score"] for x in a["results"]], [x["score"] for x in b["results"]], atol=1e-5)
    # one batch with a reference file gone bad: that search gets its error, the others their answers
    # (which file failed is data: the turn and the gallery id its query came from, not a path searched for in text)
    gone = index_dir.parent / "gone.png"
    good = [Search([Query(batched.gallery.path_of("img0"), "make it red")], 5, {"img0"}),
            Search([Query(None, "shape 4")], 5, set())]
    bad = Search([Query(gone, "make it red")], 5, {"img1"}, files={str(gone): (1, "img1")})
    answers = batched.queries._run_batch([good[0], bad, good[1]])
    assert isinstance(answers[1], ServiceError) and "'img1'" in str(answers[1]) and "gone.png" not in str(answers[1])
    assert answers[1].about == {"turn": 1, "image_id": "img1"}
    assert [x["id"] for x in answers[0][0]] == [x["id"] for x in batched.search("make it red", 5, image_id="img0")["results"]]
    assert [x["id"] for x in answers[2][0]] == [x["id"] for x in alone[9]["results"]]
    batched.close()


def test_repeated_texts_are_encoded_once(served):
    from cirlab.api import Pipeline, Query

    _, index_dir, _, model = served
    pipe = Pipeline.load(model, index_dir.parent / "cache")
    seen = []
    encode = pipe.text_encoder.encode_texts
    pipe.text_encoder = type("Counting", (), {"encode_texts": lambda self, texts, views: seen.append(list(texts))
                                              or encode(texts, views), "id": pipe.text_encoder.id})()
    ref = index_dir.parent / "tiny" / "images" / "img1.png"
    first = pipe.compose_many([Query(ref, "make it red"), Query(ref, "make it blue"), Query(ref, "make it red")])
    again = pipe.compose_many([Query(ref, "make it blue")])
    assert seen == [["make it red", "make it blue"]]  # one batch, each text once; the repeat came from memory
    assert np.allclose(first[1], again[0])


def test_the_batcher_never_holds_a_lone_search_and_keeps_errors_apart():
    import time

    from cirlab.serve.batching import MicroBatcher

    seen = []
    def run(items):  # 50 ms a batch: what arrives meanwhile forms the next batch
        seen.append(list(items))
        time.sleep(0.05)
        return [ValueError(f"bad {x}") if x < 0 else 2 * x for x in items]

    batcher = MicroBatcher(run, window_s=5.0)
    start = time.perf_counter()
    assert batcher.submit(3)[0] == 6 and batcher.submit(4)[0] == 8
    assert time.perf_counter() - start < 2.5  # alone, neither waited for the 5 s window
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher.submit, x) for x in (-1, 1, 2, 3, -5, 4, 5, 6)]
        results = [f.exception() or f.result()[0] for f in futures]
    assert [str(r) if isinstance(r, Exception) else r for r in results] == ["bad -1", 2, 4, 6, "bad -5", 8, 10, 12]
    assert sum(len(b) for b in seen) == 10 and len(seen) <= 5  # the 8 went in a few batches
    batcher.close()


def test_the_cli_the_api_and_the_server_give_the_same_top_k(served):
    """One search: the same composed query, the reference left out, through `cirlab search` over the folder and
    over the index, `Pipeline.search` and `POST /search` (the reference given by its gallery id) gives the same
    ids in the same order; a folder search filters on the data set's metadata as an index search does."""
    import json
    import subprocess
    import sys

    from cirlab.api import Pipeline
    from cirlab.index import load_index

    base, index_dir, ds, model = served
    ref = ds / "images" / "img2.png"
    pipe = Pipeline.load(model, index_dir.parent / "cache")
    index, _ = load_index(index_dir, pipe.model.embed_dim, pipe.identity)
    api = [h.id for h in pipe.search(index, ref, "make it look like shape 3", 5, exclude_reference=True)]
    http = httpx.post(base + "/search", data={"image_id": "img2", "text": "make it look like shape 3", "k": 5}).json()

    def cli(*where):
        res = subprocess.run([sys.executable, "-m", "cirlab.cli", "search", "--model", str(model), "--cache",
                              str(index_dir.parent / "cache"), "--image", str(ref), "--text", "make it look like shape 3",
                              "-k", "5", "--exclude-reference", "--json", *map(str, where)],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        return [h["id"] for h in json.loads(res.stdout)["results"]]

    gallery_ids = set(json.loads(line)["id"] for line in (ds / "images.jsonl").read_text().splitlines())
    assert len(api) == 5 and "img2" not in api and set(api) <= gallery_ids
    assert [r["id"] for r in http["results"]] == api == cli("--index", index_dir) == cli("--gallery", ds / "images")
    test_only = cli("--gallery", ds / "images", "--filter", "split=test")
    split = {r["id"]: r["split"] for r in map(json.loads, (ds / "images.jsonl").read_text().splitlines())}
    assert test_only and all(split[i] == "test" for i in test_only)
    from cirlab.index.metadata import read_metadata

    folder = pipe.encode_gallery(ds / "images", progress=False).to_index(records=read_metadata(ds / "images.jsonl"))
    assert test_only == [h.id for h in pipe.search(folder, ref, "make it look like shape 3", 5, exclude_reference=True,
                                                   filter={"split": "test"})]


def test_one_image_sent_twice_is_stored_once_and_said_so(served):
    base, index_dir, _, _ = served
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    before = read_manifest(index_dir)[0]["count"]
    same = png_bytes((10, 200, 60))
    files = [("image", ("twin.png", same, "image/png")), ("image", ("twin.png", same, "image/png")),
             ("image", ("other.png", png_bytes((10, 20, 200)), "image/png"))]
    r = httpx.post(base + "/gallery", files=files, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    body = r.json()
    twin = [x["id"] for x in body["added"] if x["id"].startswith("twin-")]
    assert len(body["added"]) == 2 and len(twin) == 1 and body["duplicates"] == twin
    assert body["size"] == before + 2 == read_manifest(index_dir)[0]["count"]
    for x in body["added"]:
        assert httpx.delete(base + f"/gallery/{x['id']}", headers=auth).status_code == 200
    assert read_manifest(index_dir)[0]["count"] == before


def test_a_wrong_method_names_every_allowed_one(served):
    base, *_ = served
    r = httpx.put(base + "/gallery")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    r = httpx.post(base + "/search", data={"text": "red", "method": ""})
    assert r.status_code == 422 and "'method' must be non-empty" in r.json()["error"]


def test_a_cut_off_upload_is_read_and_the_reply_says_so(served):
    """A PNG whose last bytes are missing decodes (its pixels are all there): it is answered, with a warning in the
    reply, for a search and for a gallery addition; a whole file gets none."""
    from cirlab.images import ends_early

    base, index_dir, *_ = served
    whole, cut = png_bytes((20, 200, 40)), png_bytes((20, 200, 40))[:-12]
    assert ends_early(cut) and not ends_early(whole) and not ends_early(b"\xff\xd8 a jpeg")
    r = search(base, {"text": "red", "k": "3"}, {"image": ("cut.png", cut, "image/png")})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert len(r.json()["warnings"]) == 1 and "cut.png: the file ends early" in r.json()["warnings"][0]
    assert search(base, {"text": "red"}, {"image": ("whole.png", whole, "image/png")}).json()["warnings"] == []
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    r = httpx.post(base + "/gallery", files=[("image", ("cutoff.png", cut, "image/png"))], headers=auth, timeout=120)
    assert r.status_code == 201 and "cutoff.png: the file ends early" in r.json()["warnings"][0]
    assert httpx.delete(base + f"/gallery/{r.json()['added'][0]['id']}", headers=auth).status_code == 200


def test_the_search_form_is_one_model_for_the_schema_and_the_validation(served):
    """The OpenAPI schema of POST /search's fields is generated from the model that validates them; a value the
    schema refuses is refused with one line; an optional query parameter offers no null."""
    base, *_ = served
    spec = httpx.get(base + "/openapi.json").json()
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert body["k"]["minimum"] == 1 and body["k"]["maximum"] == 100 and body["method"]["enum"] == ["sum"]
    assert body["text"]["maxLength"] == 1000 and body["image_id"]["minLength"] == 1 and "title" not in body["k"]
    for data, words in [({"text": "red", "filter": "[1]"}, "filter must be a JSON object of field: value pairs"),
                        ({"text": "  "}, "text: is blank: say something, or leave the field out"),
                        ({"text": "\u0085", "image_id": "img1"}, "text: is blank"),  # blank as str.strip() says
                        ({"text": "", "image_id": "img1"}, "'text' must be non-empty"),
                        ({"text": ["red", "blue"]}, "'text' was sent 2 times")]:
        r = search(base, data)
        assert r.status_code == 422 and words in r.json()["error"] and set(r.json()) - {"field"} == {"error"}, r.text
        assert r.json().get("field") in (None, *data), r.text
    params = {p["name"]: p["schema"] for p in spec["paths"]["/gallery"]["get"]["parameters"]}
    assert params["seed"]["type"] == "integer" and "anyOf" not in params["seed"]
    assert httpx.get(base + "/gallery", params={"random": 1, "seed": "null"}).status_code == 422
    assert httpx.get(base + "/gallery", params={"random": 1}).status_code == 200


def test_history_and_filter_are_json_checked_by_one_type_the_schema_states(served):
    """``history`` and ``filter`` are JSON read into the types the schema is made from: 19 earlier turns pass and 20
    are refused in one line; pretty-printed JSON passes; a form may repeat ``history`` once per turn (as a
    urlencoded array); each refusal says where (which turn) and what to send, never a pattern; a blank id is blank
    on both sides (U+0085); an id is quoted back at most 200 characters; the schema states the JSON encoding, the
    image/image_id exclusion and the 32-file limit of POST /gallery."""
    import json

    base, *_ = served
    spec = httpx.get(base + "/openapi.json").json()
    search_body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    for media in search_body.values():
        props = media["schema"]["properties"]
        assert props["history"]["type"] == "array" and props["history"]["maxItems"] == 19
        assert props["filter"]["type"] == "object" and "pattern" not in props["history"]
        assert media["encoding"] == {"history": {"contentType": "application/json"},
                                     "filter": {"contentType": "application/json"}}
    assert search_body["multipart/form-data"]["schema"]["not"] == {"required": ["image", "image_id"]}
    gallery = spec["paths"]["/gallery"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert gallery["properties"]["image"]["maxItems"] == 32

    now = {"image_id": "img3", "text": "make it look like shape 5", "k": "4"}
    turns = [{"image_id": f"img{n % 16}", "text": f"shape {n % 7}"} for n in range(20)]
    ok = search(base, {**now, "history": json.dumps(turns[:19]), "history_mode": "mean"})
    assert ok.status_code == 200 and ok.json()["query"]["history"] == 19, ok.text
    over = search(base, {**now, "history": json.dumps(turns), "history_mode": "mean"})
    assert over.status_code == 422 and over.json() == {"error": "history has 20 earlier turns; a session is limited to "
                                                                "20 turns, 19 earlier and the current one: start a new "
                                                                "session", "field": "history"}
    pretty = search(base, {**now, "history": json.dumps(turns[:2], indent=2), "history_mode": "text"})
    compact = search(base, {**now, "history": json.dumps(turns[:2]), "history_mode": "text"})
    assert pretty.status_code == 200 and pretty.json() == compact.json()
    each = httpx.post(base + "/search", data={**now, "history": [json.dumps(t) for t in turns[:2]],
                                              "history_mode": "text"}, timeout=60)  # history=...&history=...
    assert each.status_code == 200 and each.json() == compact.json(), each.text
    for history, says in [('[{"image_id": "\u0085"}]', "history turn 1 image_id is blank: say something"),
                          ('[{"text": "red"}, {"text": " "}]', "history turn 2 text is blank"),
                          ('[{"text": "red"}, {}]', "history turn 2 has neither an image_id nor a text"),
                          ('[{"text": "red"}, {"where": "x"}]', "history turn 2 has a field 'where': a turn has"),
                          ('[{"text": "red"}, "blue"]', "history turn 2 must be an object with an image_id"),
                          ('[{"text": 3}]', "history turn 1 text must be a string"),
                          ('{"text": "red"', "the field 'history' is not JSON (Expecting ',' delimiter at "),
                          ('"red"', "history must be a JSON list of turns, e.g. [{"),
                          ("[" + ", ".join(['{"text": "x"}'] * 25) + "]", "history has 25 earlier turns")]:
        r = search(base, {**now, "history": history})
        assert r.status_code == 422 and says in r.json()["error"], (history, r.text)
        assert "\\u" not in r.json()["error"] and "[^" not in r.json()["error"]  # never the pattern
        if says.startswith("history turn"):  # which turn, as data too
            assert r.json()["turn"] == int(says.split()[2]) and r.json()["field"] == "history", r.text
    for filter, says in [('{"family": 1.5}', "filter field 'family': give a string, an integer or true/false"),
                         ('{"family": []}', "filter field 'family'"), ('{"": "x"}', "filter"),
                         ("{'family': 'x'}", "the field 'filter' is not JSON")]:
        r = search(base, {**now, "filter": filter})
        assert r.status_code == 422 and says in r.json()["error"], (filter, r.text)
    pretty_filter = search(base, {**now, "filter": json.dumps({"name": ["shape 1", "shape 2"]}, indent=2)})
    assert pretty_filter.status_code == 200 and {x["name"] for x in pretty_filter.json()["results"]} <= {"shape 1",
                                                                                                       "shape 2"}
    long_id = "x" * 10_000
    for r in (search(base, {"text": "red", "image_id": long_id}),
              search(base, {"text": "red", "history": json.dumps([{"image_id": long_id}])}),
              httpx.get(base + f"/images/{long_id}")):
        assert r.status_code == 404 and "x" * 201 not in r.json()["error"] and "10,000 characters" in r.json()["error"]


def test_a_form_field_the_schema_does_not_have_is_refused(served):
    """The forms' schemas allow no other field (additionalProperties: false), and the server refuses one, in one
    line that lists the fields it takes: a typo does not pass unnoticed."""
    base, *_ = served
    spec = httpx.get(base + "/openapi.json").json()
    for path in ("/search", "/gallery"):
        for media in spec["paths"][path]["post"]["requestBody"]["content"].values():
            assert media["schema"]["additionalProperties"] is False
    r = search(base, {"txt": "red", "k": "3"})
    assert r.status_code == 422 and "unknown field(s) 'txt': the form takes image_id, text, k" in r.json()["error"]
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    r = httpx.post(base + "/gallery", data={"name": "x"}, files=[("image", ("a.png", png_bytes(), "image/png"))],
                   headers=auth, timeout=60)
    assert r.status_code == 422 and "unknown field(s) 'name'" in r.json()["error"]


def test_a_session_history_over_http_is_read_as_its_mode_says(served):
    """``POST /search`` with a session's ``history``: ``last`` answers the current turn alone, ``text`` the current
    reference with every text so far, ``mean`` the normalised mean of every turn's composed query (each computed here
    in-process from the pipeline); a bad history gets a one-line 422, an unknown gallery id a 404."""
    import json

    from cirlab.api import Pipeline
    from cirlab.index import load_index
    from cirlab.index.search import search as index_search
    from cirlab.session import JOIN

    base, index_dir, ds, model = served
    pipe = Pipeline.load(model, index_dir.parent / "cache")
    index, _ = load_index(index_dir, pipe.model.embed_dim, pipe.identity)
    images = ds / "images"
    earlier = [{"image_id": "img1", "text": "make it red"}, {"text": "shape 6, s'il te plaît"}]  # any characters
    now = {"image_id": "img3", "text": "make it look like shape 5", "k": "6"}

    def served_ids(mode):
        r = search(base, {**now, "history": json.dumps(earlier, ensure_ascii=False), "history_mode": mode})
        assert r.status_code == 200, r.text
        assert r.json()["query"]["history"] == 2 and r.json()["query"]["history_mode"] == mode
        return r.json(), [x["id"] for x in r.json()["results"]]

    def local_ids(vector):
        return [i for i, _ in index_search(index, vector[None], 6, [{"img3"}])[0]]

    body, ids = served_ids("last")
    assert ids == [x["id"] for x in search(base, now).json()["results"]] == local_ids(
        pipe.compose(images / "img3.png", now["text"]))
    body, ids = served_ids("text")
    joined = JOIN.join(["make it red", earlier[1]["text"], now["text"]])
    assert body["query"]["searched"] == [{"image": True, "text": joined}]
    assert ids == local_ids(pipe.compose(images / "img3.png", joined))
    body, ids = served_ids("mean")
    assert [q["image"] for q in body["query"]["searched"]] == [True, False, True]
    parts = [pipe.compose(images / "img1.png", "make it red"), pipe.compose(None, earlier[1]["text"]),
             pipe.compose(images / "img3.png", now["text"])]
    mean = np.mean(parts, axis=0)
    assert ids == local_ids(mean / np.linalg.norm(mean))
    scores = {x["id"]: x["score"] for x in body["results"]}
    assert np.allclose([scores[i] for i in ids], [float(index.vectors[index.row_of[i]] @ (mean / np.linalg.norm(mean)))
                                                  for i in ids], atol=1e-4)  # scored by the mean, not the last turn
    for history, mode, status, says in [("not json", "last", 422, "history"), ('{"a": 1}', "last", 422, "history"),
                                        ('[{"where": "x"}]', "mean", 422, "history"), ("[{}]", "mean", 422, "history"),
                                        ("[]", "sideways", 422, "history_mode"),
                                        ('[{"image_id": "nope"}]', "mean", 404, "'nope'")]:
        r = search(base, {**now, "history": history, "history_mode": mode})
        assert r.status_code == status and says in r.json()["error"] and "\n" not in r.json()["error"], r.text


def test_a_served_re_ranker_reorders_the_top_candidates_as_the_api_does(served, tmp_path):
    """A server with a second model (``cirlab serve --rerank``): each answer is the first model's top K in the second
    model's order, the same as ``Pipeline.search(rerank=)``; a text-only search the second model cannot compose (no
    text head) keeps the first order; /info names the re-ranker."""
    from cirlab.api import Pipeline
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment.workspace import Workspace, train_method
    from cirlab.index import load_index
    from cirlab.rerank import Reranker
    from cirlab.serve.service import SearchService

    _, index_dir, ds, model = served
    ws = Workspace.open(ds, FeatureCache(index_dir.parent / "cache"), progress=False)
    train_method(ws, "combiner", {"train": {"epochs": 2, "batch_size": 8}}, out=tmp_path / "second.pt",
                 progress=False, text_head=False)
    pipe = Pipeline.load(model, index_dir.parent / "cache")
    rerank = Reranker.beside(f"model={tmp_path / 'second.pt'},candidates=6", pipe)
    service = SearchService(pipe, index_dir, batch_window_ms=0, rerank=rerank)
    plain = SearchService(pipe, index_dir, batch_window_ms=0)
    index, _ = load_index(index_dir, pipe.model.embed_dim, pipe.identity)
    reordered = 0
    for n in range(6):
        q = dict(text=f"make it look like shape {n + 2}", image_id=f"img{n}")
        got = [x["id"] for x in service.search(k=6, **q)["results"]]
        first = [x["id"] for x in plain.search(k=6, **q)["results"]]
        assert set(got) == set(first) and len(got) == 6
        api = pipe.search(index, ds / "images" / f"img{n}.png", q["text"], 6, exclude_reference=True, rerank=rerank)
        assert got == [h.id for h in api]
        reordered += got != first
    assert reordered  # the second model's order is not the first's
    text_only = dict(text="shape 4", k=5)
    assert service.search(**text_only)["results"] == plain.search(**text_only)["results"]
    assert [h.id for h in pipe.search(index, None, "shape 4", 5, rerank=rerank)] == \
        [x["id"] for x in plain.search(**text_only)["results"]]  # the API keeps the first order too
    assert service.info()["rerank"] == {"method": "combiner", "checkpoint": "second.pt", "candidates": 6}
    # fewer candidates than k: the second model reorders the k asked for, never shortening the answer
    few = Reranker.beside(f"model={tmp_path / 'second.pt'},candidates=2", pipe)
    short = SearchService(pipe, index_dir, batch_window_ms=0, rerank=few)
    q = dict(text="make it look like shape 3", image_id="img1", k=6)
    got = [x["id"] for x in short.search(**q)["results"]]
    assert len(got) == 6 and set(got) == {x["id"] for x in plain.search(**q)["results"]}
    assert got == [h.id for h in pipe.search(index, ds / "images" / "img1.png", q["text"], 6, exclude_reference=True,
                                             rerank=few)]
    assert got == [x["id"] for x in service.search(**q)["results"]]  # candidates 2 raised to k=6: as candidates 6
    for s in (service, plain, short):
        s.close()


def test_a_failed_query_is_named_by_its_turn_and_gallery_id_as_data():
    """Which file of a session failed comes from the search's own record of its files (turn, gallery id), not from
    searching the error's text for a path; other errors keep their message."""
    from cirlab.api import Query
    from cirlab.errors import CirlabError
    from cirlab.images import UnreadableImage
    from cirlab.serve.queries import Search, query_error

    item = Search([Query("/g/a.png", "red"), Query("/g/b.png", "blue")], 5, {"b"},
                  files={"/g/a.png": (1, "a"), "/g/b.png": (2, "b")}, turns=2)
    earlier = query_error(item, [UnreadableImage("cannot read it"), np.zeros(4)])
    assert earlier.about == {"turn": 1, "image_id": "a"} and "history turn 1" in str(earlier)
    assert "/g/" not in str(earlier)
    current = query_error(item, [np.zeros(4), UnreadableImage("cannot read it")])
    assert current.about == {"turn": 2, "image_id": "b"} and "pick another reference" in str(current)
    other = query_error(item, [CirlabError("the text is too long"), np.zeros(4)])
    assert str(other) == "the text is too long" and other.about == {} and other.status == 422


def test_a_misspelled_word_is_corrected_and_the_answer_says_what_was_searched_for(served):
    """The served model records its training words: a word known neither to it nor to English is corrected before
    the search, in the current turn and in the session's history, and the reply says so, by turn; a text in the
    training phrasing is searched as typed."""
    base, *_ = served
    import json

    typed = search(base, {"text": "make it look like shpae 5", "image_id": "img3", "k": "4"})
    right = search(base, {"text": "make it look like shape 5", "image_id": "img3", "k": "4"})
    assert typed.status_code == 200 and right.status_code == 200, typed.text
    assert typed.json()["query"]["corrections"] == [{"turn": 1, "from": "shpae", "to": "shape"}]
    assert typed.json()["query"]["searched"][0]["text"] == "make it look like shape 5"
    assert right.json()["query"]["corrections"] == [] and typed.json()["results"] == right.json()["results"]
    session = search(base, {"text": "shape 2", "image_id": "img3", "history_mode": "mean",
                            "history": json.dumps([{"image_id": "img1", "text": "mkae it look like shape 4"}])})
    assert session.json()["query"]["corrections"] == [{"turn": 1, "from": "mkae", "to": "make"}], session.text
