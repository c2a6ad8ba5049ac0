import os

import numpy as np
from PIL import Image

from cirlab.encoders.cache import FeatureCache


def test_image_cache_hit_miss_and_invalidation(tmp_path, image_encoder, small_gallery):
    cache = FeatureCache(tmp_path / "cache")
    first = cache.image_features(image_encoder, small_gallery, progress=False)
    assert first.encoded == 4 and first.views["pooled"].shape == (4, 1280)

    again = FeatureCache(tmp_path / "cache").image_features(image_encoder, small_gallery, progress=False)
    assert again.encoded == 0  # a new process reads from disk
    np.testing.assert_array_equal(again.views["pooled"], first.views["pooled"])

    st = small_gallery[0].stat()
    os.utime(small_gallery[0], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = cache.image_features(image_encoder, small_gallery, progress=False)
    assert touched.encoded == 0  # same bytes, new mtime: the content hash keeps the entry
    import pyarrow.parquet as pq

    stored = {r["key"]: r for r in pq.read_table(next((tmp_path / "cache").glob("*/entries.parquet"))).to_pylist()}
    assert stored[str(small_gallery[0].resolve())]["mtime_ns"] == small_gallery[0].stat().st_mtime_ns  # refreshed on disk

    Image.new("RGB", (48, 48), (0, 0, 255)).save(small_gallery[1])
    changed = cache.image_features(image_encoder, small_gallery, progress=False)
    assert changed.encoded == 1
    assert not np.allclose(changed.views["pooled"][1], first.views["pooled"][1])
    np.testing.assert_array_equal(changed.views["pooled"][[0, 2, 3]], first.views["pooled"][[0, 2, 3]])


def test_new_view_is_added_without_evicting_the_old(tmp_path, image_encoder, small_gallery):
    cache = FeatureCache(tmp_path / "cache")
    pooled = cache.image_features(image_encoder, small_gallery[:2], ("pooled",), progress=False).views["pooled"]
    tok = cache.image_features(image_encoder, small_gallery[:2], ("tokens",), progress=False)
    assert tok.encoded == 2 and tok.views["tokens"].shape == (2, 49, 1280) and tok.views["tokens"].dtype == np.float16
    back = cache.image_features(image_encoder, small_gallery[:2], ("pooled", "tokens"), progress=False)
    assert back.encoded == 0
    np.testing.assert_allclose(back.views["pooled"], pooled, rtol=1e-6)


def test_unreadable_images_are_skipped_and_reported(tmp_path, image_encoder, small_gallery):
    bad = small_gallery[0].parent / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cache = FeatureCache(tmp_path / "cache")
    res = cache.image_features(image_encoder, [*small_gallery, bad, tmp_path / "missing.jpg"], progress=False)
    assert len(res.paths) == 4 and res.views["pooled"].shape[0] == 4
    assert {p.name for p, _ in res.failed} == {"broken.png", "missing.jpg"}
    assert "not a readable image" in dict((p.name, w) for p, w in res.failed)["broken.png"]


def test_text_cache_keys_by_text(tmp_path, text_encoder):
    cache = FeatureCache(tmp_path / "cache")
    out = cache.text_features(text_encoder, ["b", "a", "b"], progress=False)
    assert out["pooled"].shape == (3, 384)
    np.testing.assert_array_equal(out["pooled"][0], out["pooled"][2])
    direct = text_encoder.encode_texts(["a"])["pooled"][0]
    np.testing.assert_allclose(out["pooled"][1], direct, atol=1e-6)
    assert len(cache.store(text_encoder.id).entries) == 2
