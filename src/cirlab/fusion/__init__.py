"""Fusion methods: (reference image, modification text) -> query vector, built by name."""

from cirlab.fusion import attention, baselines, combiner, dqu, tirg, zero_shot  # noqa: F401  (registers the methods)
from cirlab.fusion.base import FeatureDims, Fusion, build_fusion, fusion_methods, learned_methods, zero_shot_methods

__all__ = ["FeatureDims", "Fusion", "build_fusion", "fusion_methods", "learned_methods", "zero_shot_methods"]
