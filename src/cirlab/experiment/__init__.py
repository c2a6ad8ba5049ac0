"""Experiments: a data set encoded once (``Workspace``), a method trained and evaluated on it
(``train_method``), and the multi-seed sweep behind ``cirlab bench`` (``run_bench``).

This layer sits above both ``training`` and ``eval``: it is where the two meet, so neither has to
import the other's callers.
"""

from cirlab.experiment.sweep import BenchResult, BenchRun, expand_methods, run_bench, save_bench
from cirlab.experiment.workspace import Workspace, train_method, views_needed

__all__ = ["BenchResult", "BenchRun", "Workspace", "expand_methods", "run_bench", "save_bench", "train_method",
           "views_needed"]
