"""cirlab: composed image retrieval (reference image + modification text -> ranked gallery)."""

__version__ = "0.2.0"

from cirlab.errors import CirlabError  # noqa: E402

__all__ = ["CirlabError", "__version__"]
