"""Model zoo and helpers to name the head / read the bottleneck of any nn.Module.

Example::

    from debiaskit.models import MODELS, build_model, infer_head
    sorted(MODELS)                     # the zoo: "mlp", "simple-conv", "simple-conv-small", "resnet18", ...
    model = build_model("mlp", num_classes=10, input_shape=(3, 28, 28))
    head = infer_head(model, num_classes=10)   # "fc": the name of the last Linear layer
"""

from ._build import build_model, instantiate, rebuild_model
from ._head import (
    BottleneckTap,
    default_head_name,
    forward_with_bottleneck,
    head_shape,
    not_linear_head,
    resolve_head,
    tap_bottleneck,
)
from ._layout import batch_memory_format, laid_out
from ._predict import Outputs, accuracy, collect_outputs, pool_features
from ._user import (
    SourceChangedWarning,
    build_user_model,
    describe_import,
    import_path_reference,
    infer_head,
    is_import_path,
    model_reference,
    parse_model_args,
)
from ._zoo import MLP, MODELS, BasicBlock, ModelSpec, ResidualCNN, ResNet18, SimpleConvNet, TVResNetSmall

__all__ = [
    "build_model",
    "MODELS",
    "ModelSpec",
    "MLP",
    "SimpleConvNet",
    "ResNet18",
    "TVResNetSmall",
    "ResidualCNN",
    "BasicBlock",
    "Outputs",
    "collect_outputs",
    "accuracy",
    "batch_memory_format",
    "resolve_head",
    "infer_head",
    "default_head_name",
    "head_shape",
    "forward_with_bottleneck",
    "tap_bottleneck",
    "BottleneckTap",
    "SourceChangedWarning",
]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
