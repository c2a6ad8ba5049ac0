"""Writes the checkpoints in this folder, with the code of the commit named on the command line, and the query and
gallery vectors that code computes from them: ``tests/test_fusion.py`` loads them with today's code and checks
that it computes the same vectors (old checkpoints keep loading).

    git worktree add /tmp/old COMMIT
    PYTHONPATH=/tmp/old/src .venv/bin/python tests/data/legacy/make.py COMMIT
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from cirlab.checkpoint import save_checkpoint
from cirlab.fusion import FeatureDims, build_fusion

HERE = Path(__file__).parent
DIMS = FeatureDims(image=32, text=16, image_token=32, image_tokens=4, text_token=16, levels=(3, 8), colour=408,
                   local=(4, 8))
MODELS = {  # name -> (method, model config): image heads of each kind, the reference mirror, a method's own map
    "combiner-colour-mirror": ("combiner", {"embed_dim": 16, "projection_dim": 32, "hidden_dim": 32,
                                            "image_head": "colour", "reference_mirror": True}),
    "tirg_gate-grid": ("tirg_gate", {"embed_dim": 16, "channels": 8, "image_head": "grid:cells=2"}),
    "caff-attnpool-local": ("caff", {"embed_dim": 16, "width": 16, "heads": 2, "projection_dim": 16,
                                     "hidden_dim": 16, "image_head": "attnpool:width=16,heads=2",
                                     "head_map": "local"}),
}


def inputs() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    image = {"pooled": torch.rand(3, 32, generator=g), "tokens": torch.rand(3, 4, 32, generator=g),
             "local": torch.rand(3, 4, 8, generator=g), "levels": torch.rand(3, 3, 8, generator=g),
             "colour": torch.rand(3, 408, generator=g)}
    text = {"pooled": torch.randn(3, 16, generator=g), "tokens": torch.randn(3, 5, 16, generator=g),
            "mask": torch.ones(3, 5, dtype=torch.bool)}
    return image, text


def main(commit: str) -> None:
    encoder = SimpleNamespace(spec="legacy", id="legacy-encoder", dim=0)
    image, text = inputs()
    expected = {"commit": commit, "inputs": {"image": image, "text": text}, "outputs": {}}
    for name, (method, config) in MODELS.items():
        torch.manual_seed(0)
        model = build_fusion(method, DIMS, **config)
        with torch.no_grad():  # weights away from their initial zeros, so that every part counts in the vectors
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.eval()
        save_checkpoint(HERE / f"{name}.pt", model, config, {}, encoder, encoder)
        with torch.no_grad():
            expected["outputs"][name] = {"query": model(image, text), "gallery": model.embed_gallery(image)}
    torch.save(expected, HERE / "expected.pt")


if __name__ == "__main__":
    main(sys.argv[1])
