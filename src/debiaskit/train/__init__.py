"""Training: one loop (``fit``) that methods plug into, and run folders (``train_run``)."""
from ._loop import FitResult, TrainConfig, TrainContext, TrainingMethod, fit, make_optimizer
from ._run import train_run

__all__ = ["FitResult", "TrainConfig", "TrainContext", "TrainingMethod", "fit", "make_optimizer", "train_run"]
