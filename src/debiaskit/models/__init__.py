"""Model zoo and helpers to name the head / read the bottleneck of any nn.Module."""
from ._predict import Outputs, accuracy, collect_outputs
from ._head import BottleneckTap, default_head_name, forward_with_bottleneck, head_shape, resolve_head, tap_bottleneck
from ._zoo import MLP, MODELS, BasicBlock, ModelSpec, ResNet18, SimpleConvNet, build_model

__all__ = ["Outputs", "accuracy", "collect_outputs", "BasicBlock", "BottleneckTap", "MLP", "MODELS", "ModelSpec", "ResNet18", "SimpleConvNet", "build_model",
           "default_head_name", "forward_with_bottleneck", "head_shape", "resolve_head", "tap_bottleneck"]
