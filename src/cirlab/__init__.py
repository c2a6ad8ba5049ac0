"""cirlab: composed image retrieval (reference image + modification text -> ranked gallery).

The public API, imported on first use (so ``import cirlab`` stays light and the CLI starts fast)::

    from cirlab import Pipeline
    pipe = Pipeline.load("model.pt")
    pipe = Pipeline.load("model.pt", placement=Placement.resolve(device="cuda"))
"""

from importlib import import_module

__version__ = "0.2.0"

from cirlab.errors import CirlabError

# name -> the module that defines it
_EXPORTS = {
    "Pipeline": "cirlab.api", "Query": "cirlab.api", "Placement": "cirlab.devices",
    "build_fusion": "cirlab.fusion", "fusion_methods": "cirlab.fusion", "FeatureDims": "cirlab.fusion",
    "Fusion": "cirlab.fusion",
    "build_image_encoder": "cirlab.encoders", "build_text_encoder": "cirlab.encoders",
    "image_encoders": "cirlab.encoders", "text_encoders": "cirlab.encoders",
    "build_index": "cirlab.index", "load_index": "cirlab.index", "save_index": "cirlab.index",
    "index_backends": "cirlab.index", "build_gallery_index": "cirlab.indexing",
    "image_heads": "cirlab.fusion.heads",
    "method_config": "cirlab.config",
    "Dataset": "cirlab.data.triplets", "Gallery": "cirlab.data.triplets", "Triplet": "cirlab.data.triplets",
}

__all__ = ["CirlabError", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cirlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
