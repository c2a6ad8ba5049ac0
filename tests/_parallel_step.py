"""Run by tests/test_parallel.py, in one process or as each rank of a torchrun: stage-2 training of a fusion method
on fixed random features (reference and hard negatives, the triplet term on); rank 0 writes the weights, the step
losses and each step's gradients before the optimiser.

    python tests/_parallel_step.py OUT METHOD TRIPLETS BATCH [EPOCHS]
"""

import sys

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cirlab.config import TrainConfig
from cirlab.data.features import FeatureTable, QuerySide
from cirlab.data.triplets import Triplet
from cirlab.devices import Placement
from cirlab.fusion import FeatureDims, build_fusion
from cirlab.training.parallel import join, leave, ranks
from cirlab.training.trainer import seed_everything, train_fusion


def main(out: str, method: str, n: int, batch: int, epochs: int = 1) -> None:
    join(torch.device("cpu"))
    rng = np.random.default_rng(0)
    ids = [f"g{i}" for i in range(40)]
    images = FeatureTable(ids, {"pooled": rng.normal(size=(40, 16)).astype(np.float32)})
    words = [f"t{i}" for i in range(7)]
    texts = FeatureTable(words, {"pooled": rng.normal(size=(7, 12)).astype(np.float32)})
    triplets = [Triplet(ids[i % 40], words[i % 7], [ids[(i * 7 + 3) % 40]]) for i in range(n)]
    cfg = TrainConfig.from_dict({"epochs": epochs, "batch_size": batch, "lr": 0.01, "reference_negatives": True,
                                 "hard_negatives": 2, "triplet_weight": 0.5, "seed": 0, "select_best": False})
    grads = []  # each step's gradients as the optimiser receives them (all-reduced across ranks), before it steps

    def keep_grads(optimizer, args, kwargs):
        named = {id(p): n for n, p in model.named_parameters()}
        grads.append({named[id(p)]: p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                      if p.grad is not None and id(p) in named})

    register_optimizer_step_pre_hook(keep_grads)
    seed_everything(0)
    # no dropout: its masks are drawn per rank, so only their expectation is the same
    model = build_fusion(method, FeatureDims(image=16, text=12), **({"dropout": 0.0} if method == "combiner" else {}))
    result = train_fusion(model, triplets, images, QuerySide(images, texts), cfg, progress=False,
                          placement=Placement.resolve("cpu", "torch", "fp32"))
    if ranks().main:
        torch.save({"weights": model.state_dict(), "losses": result.step_losses, "grads": grads, "lr": cfg.lr}, out)
    leave()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *map(int, sys.argv[5:]))
