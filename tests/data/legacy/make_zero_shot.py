"""Writes the zero-shot checkpoints in this folder with the code of the commit named on the command line, and what
that code computes from them: ``tests/test_zero_shot.py`` loads them with today's code and checks the same (old
zero-shot checkpoints keep loading: the text-shift method's caption bank was a byte tensor in its state dict).

    git worktree add /tmp/old COMMIT
    PYTHONPATH=/tmp/old/src .venv/bin/python tests/data/legacy/make_zero_shot.py COMMIT
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from cirlab.checkpoint import save_checkpoint
from cirlab.fusion import FeatureDims, build_fusion

HERE = Path(__file__).parent
DIMS = FeatureDims(image=16, text=16, text_token=16)  # one width: the encoders' own space, no aligned model
CAPTIONS = ["a red apple", "a man cooking", "a blue car, facing left", "ünïcödé caption ✓"]


def inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": {"pooled": torch.rand(3, 16, generator=g)}, "shift": {"pooled": torch.randn(3, 16, generator=g)},
            "bank": torch.randn(len(CAPTIONS), 16, generator=g)}


def main(commit: str) -> None:
    encoder = SimpleNamespace(spec="legacy", id="legacy-encoder", dim=0)
    x = inputs()
    out = {"commit": commit, "inputs": x, "outputs": {}}
    torch.manual_seed(0)
    shift = build_fusion("zs_text_shift", DIMS, scale=0.5)
    shift.set_bank(CAPTIONS, x["bank"])
    save_checkpoint(HERE / "zs_text_shift.pt", shift, {"scale": 0.5}, {}, encoder, encoder)
    with torch.no_grad():
        captions, vectors = shift.captions(shift.embed_image(x["image"]))
        out["outputs"]["zs_text_shift"] = {"query": shift(x["image"], x["shift"]), "captions": captions,
                                           "caption_vectors": vectors, "bank": list(shift.bank)}
    torch.manual_seed(0)
    p2w = build_fusion("pic2word", DIMS, hidden_dim=8)
    with torch.no_grad():  # weights away from their initial values, so that every part counts
        for p in p2w.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    p2w.eval()
    save_checkpoint(HERE / "pic2word.pt", p2w, {"hidden_dim": 8}, {}, encoder, encoder)
    with torch.no_grad():
        out["outputs"]["pic2word"] = {"gallery": p2w.embed_gallery(x["image"]),
                                      "words": p2w.pseudo_words(x["image"], SimpleNamespace(word_dim=16, spec="legacy"))}
    torch.save(out, HERE / "expected_zero_shot.pt")


if __name__ == "__main__":
    main(sys.argv[1])
