"""Fusion methods: (reference image, modification text) -> query vector, built by name."""

from cirlab.fusion import baselines, combiner  # noqa: F401  (registers the methods)
from cirlab.fusion.base import Fusion, build_fusion, fusion_methods

__all__ = ["Fusion", "build_fusion", "fusion_methods"]
