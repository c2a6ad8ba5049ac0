"""Encoders: images and texts to feature views, built by name through two registries."""

from cirlab.encoders import clip, efficientnet, hf, sift_bovw, tuned  # noqa: F401  (registers the backends)
from cirlab.encoders.base import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    ImageEncoder,
    TextEncoder,
    build_image_encoder,
    build_text_encoder,
    fit_image_encoder,
    image_encoders,
    text_encoders,
)

__all__ = [
    "DEFAULT_IMAGE_ENCODER", "DEFAULT_TEXT_ENCODER", "ImageEncoder", "TextEncoder",
    "build_image_encoder", "build_text_encoder", "fit_image_encoder", "image_encoders", "text_encoders",
]
