import pytest
import torch

from cirlab.config import method_config
from cirlab.fusion import build_fusion, fusion_methods


def _batch(b=6, di=20, dt=12):
    g = torch.Generator().manual_seed(0)
    return {"pooled": torch.randn(b, di, generator=g)}, {"pooled": torch.randn(b, dt, generator=g)}


@pytest.mark.parametrize("name", fusion_methods.names())
def test_forward_backward_shapes_and_unit_norm(name):
    torch.manual_seed(0)
    m = build_fusion(name, 20, 12, **{**method_config(name)["model"], "embed_dim": 16})
    ref, txt = _batch()
    q = m.compose(ref, txt)
    g = m.embed_gallery(ref)
    assert q.shape == (6, 16) and g.shape == (6, 16)
    assert torch.allclose(q.norm(dim=-1), torch.ones(6), atol=1e-5)
    (q * g).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_methods_are_deterministic_under_a_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = build_fusion("combiner", 20, 12, embed_dim=16, projection_dim=8, hidden_dim=8).eval()
        outs.append(m.compose(*_batch()))
    assert torch.equal(outs[0], outs[1])


def test_baselines_ignore_what_they_should():
    m = build_fusion("image_only", 20, 12, embed_dim=16)
    ref, txt = _batch()
    assert torch.equal(m.compose(ref, txt), m.compose(ref, {"pooled": torch.zeros_like(txt["pooled"])}))
    assert torch.allclose(m.compose(ref, txt), m.embed_gallery(ref))
    t = build_fusion("text_only", 20, 12, embed_dim=16)
    assert torch.equal(t.compose(ref, txt), t.compose({"pooled": torch.zeros_like(ref["pooled"])}, txt))


def test_combiner_starts_as_a_convex_combination():
    """With the zero-initialised residual, the query lies on the arc between x and t."""
    m = build_fusion("combiner", 20, 12, embed_dim=16, projection_dim=8, hidden_dim=8).eval()
    ref, txt = _batch()
    x, t = m.project_image(ref["pooled"]), m.project_text(txt["pooled"])
    q = m.compose(ref, txt)
    # q is L2(lam t + (1 - lam) x) with 0 < lam < 1: it lies in the span of x and t
    basis = torch.stack([x, t], dim=-1)
    coef = torch.linalg.lstsq(basis, q.unsqueeze(-1)).solution
    assert torch.allclose((basis @ coef).squeeze(-1), q, atol=1e-5)
    assert (coef > 0).all()
