"""Optional dependencies (the extras in pyproject.toml): imported where used, or a one-line error that
names the extra which installs them."""

from __future__ import annotations

import importlib
import logging

from cirlab.errors import CirlabError

log = logging.getLogger("cirlab")


def need(module: str, extra: str, what: str):
    """``module``, imported; if it is not installed, a one-line error: ``what`` needs it, and
    ``pip install 'cirlab[extra]'`` brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CirlabError(f"{what} needs the package {module.split('.')[0]!r}, which is not installed: "
                          f"pip install 'cirlab[{extra}]'") from None


def pyplot():
    """matplotlib's pyplot on the Agg back end (no display), or None without the ``plots`` extra: plots are
    then skipped with a warning, and everything else runs."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed, so no PNG plot is drawn: pip install 'cirlab[plots]'")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
