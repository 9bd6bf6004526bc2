"""Mixed precision (--amp bf16 | fp16) and device checks, on CPU (torch autocasts bf16 and fp16 there)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import dist_cases  # noqa: E402
from debiaskit.errors import ConfigError  # noqa: E402
from debiaskit.models import build_model  # noqa: E402
from debiaskit.train import TrainConfig, TrainingMethod, fit  # noqa: E402


def _model():
    torch.manual_seed(0)
    return build_model("mlp", num_classes=10, input_shape=(3, 28, 28))


def test_amp_mode_is_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="--amp must be one of off, bf16, fp16"):
        TrainConfig(amp="fp8")
    assert TrainConfig(amp=None).amp == "off"


@pytest.mark.parametrize("amp, dtype", [("off", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_training_steps_run_in_the_chosen_precision(toy_splits, amp, dtype):
    model, seen = _model(), []
    model.fc.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    result = fit(model, toy_splits.train, config=TrainConfig(epochs=1, batch_size=256, amp=amp), progress=False)
    assert set(seen) == {dtype}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.parametrize("method", dist_cases.trainable_methods())
def test_every_method_trains_under_bf16_autocast(method):
    """Close to the float32 run: bf16 keeps ~3 significant digits (measured max |weight difference| after
    2 epochs <= 0.02; FMD's post-hoc step scale may switch, so its weights are only checked finite)."""
    splits = dist_cases.toy_splits()
    got = dist_cases.train_method(method, splits, amp="bf16")
    assert all(torch.isfinite(v).all() for v in got.values() if v.is_floating_point())
    if method != "fmd":
        ref = dist_cases.train_method(method, splits)
        worst = max((got[k] - ref[k]).abs().max().item() for k in ref if k.startswith("model."))
        assert worst < 0.1


def test_fp16_skips_a_step_whose_gradients_overflow_and_lowers_the_scale(toy_splits):
    """The GradScaler: a step with inf gradients leaves the weights as they were and halves the loss scale;
    the next steps train."""

    class Overflow(TrainingMethod):
        def training_step(self, batch, ctx):
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ctx.model(batch.x), batch.y)
            if ctx.step == 0:
                self.before = [p.detach().clone() for p in ctx.model.parameters()]
                self.scales = [ctx.precision.scaler.get_scale()]
                loss = loss * float("inf")
            ctx.backward(loss)
            ctx.step_optimizer(self.optimizer)
            if ctx.step == 0:
                self.unchanged = all(torch.equal(a, p) for a, p in zip(self.before, ctx.model.parameters()))
            else:
                self.scales.append(ctx.precision.scaler.get_scale())
            return {"loss": float(loss.detach()) if ctx.step else 0.0}

    method = Overflow()
    result = fit(
        _model(),
        toy_splits.train,
        method=method,
        config=TrainConfig(epochs=1, batch_size=256, amp="fp16"),
        progress=False,
    )
    assert method.unchanged
    assert method.scales[1] == method.scales[0] / 2
    assert not all(torch.equal(a, p) for a, p in zip(method.before, result.model.parameters()))


def test_cuda_without_cuda_is_a_clear_error_before_any_compute(tmp_path, monkeypatch, capsys):
    from debiaskit.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "debiaskit",
            "train",
            "--dataset",
            "biased-toy",
            "--rho",
            "0.95",
            "--model",
            "mlp",
            "--device",
            "cuda",
            "--amp",
            "bf16",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exc:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 2 and "--device cuda" in err and "use --device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_the_prepared_gpu_script_runs_its_pipeline_on_cpu(tmp_path):
    """benchmarks/gpu_table2_cell.py (train -> audit -> FFW -> results for BENCHMARKS.md), at its smoke size."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "gpu_table2_cell.py"
    spec = importlib.util.spec_from_file_location("gpu_table2_cell", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = script.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    assert results["stages"] == ["train", "audit", "ffw"]
    text = (tmp_path / "results.md").read_text()
    assert "| vanilla (ours) |" in text and "| FFW (ours) |" in text and "Machine: cpu" in text
