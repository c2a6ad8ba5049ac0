import math

import pytest
import torch

from cirlab.config import method_config, variant_names
from cirlab.errors import CirlabError
from cirlab.fusion import FeatureDims, build_fusion, fusion_methods, learned_methods

# tiny encoders: 20-d pooled image, a 4x4 map of 20-d regions, 3 levels padded to 8, 12-d text of 6 tokens, a 4x4
# local map of 10-d regions, and the views the pixels give, whatever the network: colour and a 32 px thumbnail
DIMS = FeatureDims(image=20, text=12, image_token=20, image_tokens=16, text_token=12, levels=(3, 8), colour=408,
                   local=(16, 10))
SMALL = {"embed_dim": 16, "width": 8, "heads": 2, "projection_dim": 8, "hidden_dim": 8, "channels": 4,
         "bilinear_dim": 4, "bilinear_hidden": 8}


def small(name, **over):
    """A method at its shipped config, shrunk to the tiny dims (only the options it has)."""
    cfg = method_config(name)["model"]
    params = {**cfg, **{k: v for k, v in SMALL.items() if k in cfg}, **over}
    return build_fusion(method_config(name)["method"], DIMS, **params)


def batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, 16, 20, generator=g).abs()  # post-activation maps are non-negative
    image = {"pooled": tokens.mean(dim=1), "tokens": tokens, "levels": torch.randn(b, 3, 8, generator=g),
             "colour": torch.rand(b, 408, generator=g), "thumbnail": torch.rand(b, 32 * 32 * 3, generator=g),
             "local": torch.randn(b, 16, 10, generator=g)}
    mask = torch.ones(b, 6, dtype=torch.bool)
    mask[0, 3:] = False  # one short text: its padding must not matter
    text = {"pooled": torch.randn(b, 12, generator=g), "tokens": torch.randn(b, 6, 12, generator=g), "mask": mask}
    return image, text


ALL = learned_methods()  # the zero-shot family has no parameters: tests/test_zero_shot.py


@pytest.mark.parametrize("name", ALL + variant_names())
def test_forward_backward_shapes_and_unit_norm(name):
    torch.manual_seed(0)
    m = small(name)
    ref, txt = batch()
    q = m(ref, txt)
    g = m.embed_gallery(ref)
    assert q.shape == (6, 16) and g.shape == (6, 16)
    assert torch.allclose(q.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert torch.allclose(g.norm(dim=-1), torch.ones(6), atol=1e-5)
    (q * g).sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert grads and all(torch.isfinite(gr).all() for gr in grads if gr is not None)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)


@pytest.mark.parametrize("name", ALL)
def test_methods_are_deterministic_under_a_seed(name):
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = small(name).eval()
        outs.append(m.compose(*batch()))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(4)
    assert not torch.equal(small(name).eval().compose(*batch()), outs[0])  # the seed does matter


@pytest.mark.parametrize("name", ["mffm", "caff"])
def test_text_padding_is_ignored(name):
    torch.manual_seed(0)
    m = small(name).eval()
    ref, txt = batch()
    noisy = {**txt, "tokens": txt["tokens"].clone()}
    noisy["tokens"][0, 3:] = 100.0  # garbage in the padded positions of the short text
    assert torch.allclose(m.compose(ref, txt), m.compose(ref, noisy), atol=1e-6)


def test_baselines_ignore_what_they_should():
    m = small("image_only")
    ref, txt = batch()
    assert torch.equal(m.compose(ref, txt), m.compose(ref, {"pooled": torch.zeros_like(txt["pooled"])}))
    assert torch.allclose(m.compose(ref, txt), m.embed_gallery(ref))
    t = small("text_only")
    assert torch.equal(t.compose(ref, txt), t.compose({"pooled": torch.zeros_like(ref["pooled"])}, txt))


def test_combiner_starts_as_a_convex_combination():
    """With the zero-initialised residual, the query lies on the arc between x and t."""
    m = small("combiner").eval()
    ref, txt = batch()
    x, t = m.project_image(ref["pooled"]), m.project_text(txt["pooled"])
    q = m.compose(ref, txt)
    basis = torch.stack([x, t], dim=-1)
    coef = torch.linalg.lstsq(basis, q.unsqueeze(-1)).solution
    assert torch.allclose((basis @ coef).squeeze(-1), q, atol=1e-5)
    assert (coef > 0).all()


def test_zero_initialised_branches_start_from_the_combiner():
    """clip_cd's bilinear branch and caff's IGGF/TGGF outputs start at zero: at init both equal a
    Combiner with the same weights; mffm starts at the sum baseline."""
    ref, txt = batch()
    torch.manual_seed(0)
    cd = small("clip_cd").eval()
    no_bil = small("clip_cd", bilinear=False).eval()
    no_bil.load_state_dict({k: v for k, v in cd.state_dict().items() if not k.startswith("bil_")})
    assert torch.allclose(cd.compose(ref, txt), no_bil.compose(ref, txt), atol=1e-6)
    mf = small("mffm").eval()
    x, t = mf.project_image(ref["pooled"]), mf.project_text(txt["pooled"])
    assert torch.allclose(mf.compose(ref, txt), torch.nn.functional.normalize(x + t, dim=-1), atol=1e-6)


def test_clip_cd_bilinear_branch_is_an_outer_product():
    torch.manual_seed(0)
    m = small("clip_cd", zero_init_output=False).eval()
    x, t = torch.randn(2, 16), torch.randn(2, 16)
    fi, ft = torch.relu(m.bil_image(x)), torch.relu(m.bil_text(t))
    outer = torch.einsum("bi,bj->bij", fi, ft).reshape(2, -1)
    expected = m.bil_out(torch.relu(m.bil_hidden(outer)))
    assert torch.allclose(m.bilinear_branch(x, t), expected, atol=1e-6)
    assert m.bil_hidden.in_features == 4 * 4  # K*K with K < D


@pytest.mark.parametrize("name", ["tirg_gate", "tirg_gate-thumbnail", "tirg_gate-local"])
def test_tirg_gate_query_with_open_gate_equals_the_gallery_vector(name):
    """The gallery path is the pooled projection; the query path pools the gated projected map.
    With the gate forced open (sigmoid -> 1) both must agree exactly (paper 003's X = W_p * S); so must the
    map a small network computes from the thumbnail, or the encoder's local map, with their grid heads, and the
    residual branch (zero at start)."""
    torch.manual_seed(0)
    m = small(name).eval()
    last_bn = m.gate[-1]
    torch.nn.init.zeros_(last_bn.weight)
    torch.nn.init.constant_(last_bn.bias, 50.0)  # sigmoid(50) == 1.0 in float32
    ref, txt = batch()
    assert torch.allclose(m.compose(ref, txt), m.embed_gallery(ref), atol=1e-5)


def test_tirg_gate_positions_tell_the_regions_of_a_uniform_map_apart():
    """A convolution cannot tell where it is inside a map; with ``positions`` the gate can. On a map whose
    regions are all alike, the gate's values at the inner regions are equal without positions, not with them."""
    ref, txt = batch()
    ref = {**ref, "tokens": torch.ones_like(ref["tokens"]), "pooled": torch.ones_like(ref["pooled"])}
    for positions in (False, True):
        torch.manual_seed(0)
        m = small("tirg_gate", positions=positions).eval()
        gate = m.gate(m.gate_input(m.image_map(ref), txt))
        inner = gate[:, :, 1:-1, 1:-1].flatten(2)  # away from the zero padding at the border
        same = torch.allclose(inner, inner[:, :, :1].expand_as(inner), atol=1e-6)
        assert same != positions


def test_tirg_gate_map_from_is_checked():
    with pytest.raises(CirlabError, match="map_from must be 'tokens', 'local' or 'thumbnail'"):
        small("tirg_gate", map_from="pixels")
    no_local = FeatureDims(**{**DIMS.to_dict(), "local": (0, 0)})
    with pytest.raises(CirlabError, match="map_from=local needs an encoder with a square local view"):
        build_fusion("tirg_gate", no_local, map_from="local")


@pytest.mark.parametrize("map_from", ["local", "thumbnail"])
def test_tirg_gate_heads_are_sized_for_its_own_map(map_from):
    """Attention pooling's position table has one row per region of the map its heads read: tirg_gate's own map
    (8 x 8 from the thumbnail), not the encoder's region tokens (4 x 4 here)."""
    torch.manual_seed(0)
    m = small("tirg_gate", map_from=map_from, image_head="attnpool").eval()
    side = 8 if map_from == "thumbnail" else 4
    assert m.head_regions() == side * side
    ref, txt = batch()
    assert m(ref, txt).shape == m.embed_gallery(ref).shape == (6, 16)


def test_tirg_gate_on_the_local_map_reads_it_and_not_the_region_tokens():
    """With ``map_from: local`` the query and the gallery read the local view, and its grid head reads the method's
    map: the encoder's region tokens (125 KB an image in the cache) are not loaded, and changing them changes nothing."""
    torch.manual_seed(0)
    m = small("tirg_gate-local").eval()
    assert "tokens" not in m.image_views and "tokens" not in m.gallery_views and "local" in m.gallery_views
    ref, txt = batch()
    ref = {k: v for k, v in ref.items() if k != "tokens"}
    before = m.embed_gallery(ref)
    moved = {**ref, "local": ref["local"] + torch.randn_like(ref["local"])}
    assert not torch.allclose(m.embed_gallery(moved), before, atol=1e-3)
    assert torch.allclose(m(ref, txt).norm(dim=-1), torch.ones(len(before)))


def test_tirg_weights_are_learnable_scalars():
    m = small("tirg")
    assert m.w_gate.requires_grad and m.w_residual.requires_grad and m.w_gate.dim() == 0


def test_mffm_token_count_follows_regions_and_levels():
    ref, txt = batch()
    for regions, levels, expected in ((0, False, 1), (4, False, 5), (8, True, 12), (12, True, 16)):
        m = small("mffm", regions=regions, levels=levels)
        x = m.project_image(ref["pooled"])
        assert m.image_tokens(ref, x).shape[1] == expected
    assert "tokens" not in small("mffm", regions=0).image_views
    assert small("mffm", layers=6).layers.__len__() == 6


def test_caff_ablation_branches():
    ref, txt = batch()
    assert not hasattr(small("caff", branches="iggf"), "tggf_key")
    assert not hasattr(small("caff", branches="tggf"), "iggf_attention")
    assert small("caff", branches="tggf").text_views == ("pooled",)
    for branches in ("iggf", "tggf", "both"):
        assert small("caff", branches=branches).compose(ref, txt).shape == (6, 16)


def test_bad_options_are_one_line_errors():
    with pytest.raises(CirlabError, match="regions must be one of"):
        small("mffm", regions=5)
    with pytest.raises(CirlabError, match="combiner has no option 'colour'; its options: "):
        small("combiner", colour="red")
    with pytest.raises(CirlabError, match="branches must be"):
        small("caff", branches="all")


def test_mffm_attention_heads_split_the_width():
    with pytest.raises(CirlabError, match="not divisible"):
        small("mffm", width=10, heads=4)
    assert math.isclose(small("mffm", heads=1).layers[0].cross.num_heads, 1)


@pytest.mark.parametrize("name", ["combiner-colour-mirror", "tirg_gate-grid", "caff-attnpool-local"])
def test_checkpoints_saved_before_fusions_were_whole_at_construction_still_load(name):
    """Checkpoints written by 5dc9962, where the image heads and the mirror gate were attached after construction
    (``tests/data/legacy/make.py``): they load, and give the vectors that code gave."""
    from pathlib import Path

    from cirlab.checkpoint import fusion_from_checkpoint, read_checkpoint

    legacy = Path(__file__).parent / "data" / "legacy"
    expected = torch.load(legacy / "expected.pt", weights_only=False)
    ckpt = read_checkpoint(legacy / f"{name}.pt")
    assert any(k.startswith("mirror_gate.") for k in ckpt["state_dict"]) == name.endswith("mirror")
    model = fusion_from_checkpoint(ckpt, FeatureDims(**ckpt["meta"]["dims"]), legacy / f"{name}.pt")
    assert (model.mirror is not None) == name.endswith("mirror") and len(model.heads) == 1
    image, text = expected["inputs"]["image"], expected["inputs"]["text"]
    with torch.no_grad():
        torch.testing.assert_close(model(image, text), expected["outputs"][name]["query"], rtol=0, atol=1e-6)
        torch.testing.assert_close(model.embed_gallery(image), expected["outputs"][name]["gallery"], rtol=0, atol=1e-6)


def test_a_fusion_is_whole_when_constructed():
    """The image heads, their views and the mirror are made by the constructor; nothing is attached later."""
    model = fusion_methods.get("sum")(DIMS, embed_dim=16, image_head="grid:cells=2+colour", reference_mirror=True)
    assert len(model.heads) == 2 and model.mirror is not None
    assert set(model.image_views) == set(model.gallery_views) == {"pooled", "tokens", "colour"}
    assert not hasattr(model, "set_image_head") and not hasattr(model, "set_reference_mirror")
    assert not model.reads_raw_queries and small("dqu").reads_raw_queries
    with pytest.raises(CirlabError, match=r"sum has no option 'nope'; its options: embed_dim \(int"):
        build_fusion("sum", DIMS, nope=1)
