"""FFW - Finding Fantastic Weights (Nahon et al., ECCV 2024): remove the sub-network that carries a bias.

Given a vanilla-trained model and a small unbiased set with bias labels (D^u), learn a gate per
weight (unstructured) or per unit (structured) of the frozen model so that a privacy head can no
longer read the bias at the bottleneck, while the task still works. By default the kept weights are then trained
briefly under the same objective, an eraser is fitted in front of the head and the head is refit
(``preset="paper"``, or ``tune_epochs=0, erase="none", refit_head=False``: the paper's gates alone, no weight
changed; ``FFW_PRESETS`` lists what each preset sets). An output worse than
the input on D^u_val, or near chance, is refused (:class:`~debiaskit.errors.NoImprovementError`).

Example::

    from debiaskit.ffw import audit_ffw_folder, find_fantastic_weights, save_result, load_pruned_model
    result = find_fantastic_weights(model, head="fc", train=splits.unbiased_train, val=splits.unbiased_val,
                                    mode="unstructured", gamma=10)
    result.model          # plain nn.Module with the pruned weights set to 0
    result.masks          # {layer: uint8 mask}, 1 = kept
    result.selected       # D^u_val numbers of the selected hard-masked model
    save_result(result, "runs/ffw")          # model.safetensors + masks.safetensors + ffw.json
    pruned = load_pruned_model("runs/ffw")   # the exported network again (zoo or your own model)
    report, where = audit_ffw_folder("runs/ffw")   # audit the pruned network (runs/ffw/audit), as `debiaskit audit`

Progress: one line per epoch on the terminal (``progress=False`` to silence it, ``callback=`` for your own).

Structured mode gates whole units and exports a physically smaller network, on any network of
standard layers: the units whose removal is exact are found in the torch.fx graph of its forward
(chains, MLPs, torchvision-style ResNets - a residual stage's channels share one gate -, depthwise
convs); what cannot be gated exactly is listed with the reason (``result.sparsity["ungated"]``).
"""

from ._config import FFWConfig
from ._erase import ERASERS, ErasedHead, LinearEraser, attach_eraser, conditional_erasers, fit_linear_eraser
from ._export import (
    apply_unstructured_masks,
    count_parameters,
    inference_time,
    load_masks,
    module_shapes,
    prune_structured,
    resize_like,
    save_masks,
    structured_sparsity,
    unstructured_sparsity,
)
from ._folders import FFW_FOLDER
from ._gates import GatedModel, GateState, UnitGate, WeightGate, freeze, gate_value, install_gates
from ._pipeline import FFWResult, find_fantastic_weights
from ._presets import FFW_PRESETS
from ._progress import epoch_line, print_epoch, progress_line
from ._run import (
    FFWRun,
    audit_ffw_folder,
    before_after_rows,
    choice_line,
    default_out,
    ffw_run,
    has_checkpoint,
    load_ffw_model,
    no_harm_lines,
    partial_dir,
    vanilla_readings,
)
from ._save import load_pruned_model, save_result
from ._stages import StagesResult, apply_stages  # internal: the development suite's gate-free pipelines
from ._step import ffw_step, mutual_information
from ._structure import GatePoint, Structure, analyse_structure

__all__ = [
    "find_fantastic_weights",
    "FFWConfig",
    "FFW_PRESETS",
    "FFWResult",
    "ffw_run",
    "FFWRun",
    "audit_ffw_folder",
    "save_result",
    "load_pruned_model",
    "load_ffw_model",
    "analyse_structure",
    "Structure",
    "GatePoint",
    "install_gates",
    "GatedModel",
    "GateState",
    "UnitGate",
    "WeightGate",
    "freeze",
    "gate_value",
    "ffw_step",
    "mutual_information",
    "apply_unstructured_masks",
    "prune_structured",
    "resize_like",
    "load_masks",
    "save_masks",
    "count_parameters",
    "inference_time",
    "module_shapes",
    "structured_sparsity",
    "unstructured_sparsity",
    "ERASERS",
    "ErasedHead",
    "LinearEraser",
    "attach_eraser",
    "conditional_erasers",
    "fit_linear_eraser",
]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
