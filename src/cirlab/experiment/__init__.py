"""Experiments: a data set encoded once (``Workspace``), a method trained and evaluated on it
(``train_method``), the multi-seed sweep behind ``cirlab bench`` (``run_bench``) and the measurements it runs on
each trained model (``Measurement``, registered in ``measurements``).

This layer sits above both ``training`` and ``eval``: it is where the two meet, so neither has to
import the other's callers.
"""

from cirlab.experiment.measure import Measurement, Trial, measurements
from cirlab.experiment.measures import make_measures
from cirlab.experiment.sweep import BenchResult, BenchRun, expand_methods, run_bench, save_bench
from cirlab.experiment.workspace import Workspace, train_method, views_needed

__all__ = ["BenchResult", "BenchRun", "Measurement", "Trial", "Workspace", "expand_methods", "make_measures",
           "measurements", "run_bench", "save_bench", "train_method", "views_needed"]
