"""Vector indexes over gallery vectors: one registry of backends, combined scoring, persistence."""

from cirlab.index import backends, qdrant  # noqa: F401  (registers the backends)
from cirlab.index.base import BaseIndex, VectorIndex, build_index, check_filter, index_backends, parse_filter_args, parse_spec
from cirlab.index.scoring import CombinedScoring, rescore
from cirlab.index.store import (DamagedIndex, Integrity, check_index, describe_index, load_index, read_manifest, save_index,
                                update_index, verify_index)

__all__ = ["BaseIndex", "CombinedScoring", "DamagedIndex", "Integrity", "VectorIndex", "build_index", "check_filter",
           "check_index", "describe_index", "index_backends", "load_index", "parse_filter_args", "parse_spec", "read_manifest",
           "rescore", "save_index", "update_index", "verify_index"]
