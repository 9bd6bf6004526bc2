"""Model zoo and helpers to name the head / read the bottleneck of any nn.Module."""
from ._predict import Outputs, accuracy, collect_outputs
from ._layout import batch_memory_format, laid_out
from ._head import BottleneckTap, default_head_name, forward_with_bottleneck, head_shape, resolve_head, tap_bottleneck
from ._zoo import MLP, MODELS, BasicBlock, ModelSpec, ResidualCNN, ResNet18, SimpleConvNet, TVResNetSmall
from ._user import (SourceChangedWarning, build_user_model, import_path_reference, infer_head, is_import_path,
                    model_reference, parse_model_args)
from ._build import build_model, instantiate, rebuild_model

__all__ = ["Outputs", "accuracy", "collect_outputs", "BasicBlock", "BottleneckTap", "MLP", "MODELS", "ModelSpec", "ResNet18", "ResidualCNN", "SimpleConvNet", "TVResNetSmall", "batch_memory_format", "build_model", "laid_out",
           "default_head_name", "forward_with_bottleneck", "head_shape", "resolve_head", "tap_bottleneck",
           "SourceChangedWarning", "build_user_model", "import_path_reference", "infer_head", "instantiate",
           "is_import_path", "model_reference", "parse_model_args", "rebuild_model"]
