"""Text-to-image search without a reference: a text head aligned to a trained method's gallery space.

A composed query needs a reference image; a user (or the web page's first turn) often has only
words. After a fusion method is trained, ``fit_text_head`` learns a projection from the text
encoder's pooled vector into the method's gallery space on the image-caption pairs of the
training images, with the symmetric InfoNCE loss of image-text alignment (CLIP's objective;
the gallery side stays frozen, so every index built with the method answers text queries
unchanged). The head travels inside the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cirlab.fusion.text_head import TextHead
from cirlab.training.losses import batch_infonce
from cirlab.training.trainer import seed_everything


@dataclass
class TextHeadResult:
    pairs: int
    epochs: int
    seconds: float
    recall: dict[int, float]  # text -> image Recall@K on held-out pairs (empty: none given)

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "epochs": self.epochs, "seconds": round(self.seconds, 2),
                "recall": {str(k): v for k, v in self.recall.items()}}


def text_recall(head: TextHead, texts: torch.Tensor, images: torch.Tensor, ks=(1, 5, 10, 50)) -> dict[int, float]:
    """Recall@K of caption i finding image i among all images of the set (duplicate captions: any of theirs)."""
    with torch.inference_mode():
        scores = head(texts) @ images.t()
    rank = (scores > scores.diagonal()[:, None]).sum(dim=1)
    return {k: float((rank < k).float().mean() * 100) for k in ks}


def fit_text_head(text_vectors: torch.Tensor, image_vectors: torch.Tensor, embed_dim: int, epochs: int = 40,
                  batch_size: int = 256, lr: float = 1e-3, logit_scale: float = 20.0, seed: int = 0,
                  held_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[TextHead, TextHeadResult]:
    """Train a ``TextHead`` on pairs (caption vector i, frozen gallery vector of image i)."""
    import time

    seed_everything(seed)
    t0 = time.perf_counter()
    head = TextHead(text_vectors.shape[1], embed_dim)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    n = len(text_vectors)
    images = F.normalize(image_vectors.float(), dim=-1)
    for _ in range(epochs):
        head.train()
        for s in range(0, n, batch_size):
            rows = torch.randperm(n)[:batch_size] if n > batch_size else torch.arange(n)
            q, t = head(text_vectors[rows]), images[rows]
            loss = (batch_infonce(q, t, logit_scale) + batch_infonce(t, q, logit_scale)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    recall = text_recall(head, *held_out) if held_out is not None and len(held_out[0]) else {}
    return head, TextHeadResult(n, epochs, time.perf_counter() - t0, recall)


def caption_pairs(captions: dict[str, str], ids: list[str]) -> tuple[list[str], list[str]]:
    """(image ids, captions) of the images that have a caption."""
    keep = [i for i in ids if (captions.get(i) or "").strip()]
    return keep, [captions[i].strip() for i in keep]
