"""ERM: plain cross-entropy on the biased training set (the base :class:`~debiaskit.train.TrainingMethod`).

Under torchrun: a mean over the batch on each rank; DistributedDataParallel averages the gradients, which
is the gradient of the global batch's mean (no other state)."""

from ..train import TrainingMethod
from ._registry import REFERENCE_METHOD, MethodInfo, register_method

register_method(MethodInfo(name=REFERENCE_METHOD, description="ERM (plain cross-entropy)", factory=TrainingMethod))
