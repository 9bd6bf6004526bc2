"""ERM: plain cross-entropy on the biased training set (the base :class:`~debiaskit.train.TrainingMethod`)."""
from ..train import TrainingMethod
from ._registry import REFERENCE_METHOD, MethodInfo, register_method

register_method(MethodInfo(name=REFERENCE_METHOD, description="ERM (plain cross-entropy)", factory=TrainingMethod))
