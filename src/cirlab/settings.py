"""Where cirlab keeps its state: the feature cache and the default model."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$CIRLAB_HOME``, else ``$XDG_CACHE_HOME/cirlab``, else ``~/.cache/cirlab``."""
    if os.environ.get("CIRLAB_HOME"):
        return Path(os.environ["CIRLAB_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base).expanduser() / "cirlab"


def cache_dir() -> Path:
    return home() / "features"


def default_model_path() -> Path:
    """The model ``make demo`` trains and every command uses when ``--model`` is not given."""
    return home() / "models" / "default.pt"


def offline() -> None:
    """The command line's switches (``cirlab`` calls this first; the library never does): no command reaches a
    model hub unless the user set ``HF_HUB_OFFLINE=0``, and transformers prints no progress bars."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
