"""FFW's named presets (ffw/_presets.py): what each sets, overrides win, the CLI reads them, paper changes no weight."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields

import pytest
import torch
from typer.testing import CliRunner

from debiaskit.cli import app, main
from debiaskit.errors import ConfigError
from debiaskit.ffw import FFW_PRESETS, FFWConfig, find_fantastic_weights, load_ffw_model, load_masks
from debiaskit.ffw import _run as ffw_run_module
from debiaskit.ffw._presets import SIGNATURE_FIELDS
from debiaskit.runs import load_run
from debiaskit.train import TrainConfig, train_run

runner = CliRunner()


class _Stop(Exception):
    """Raised where the run would load the model: the config is built, nothing computed."""


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, toy_splits):
    out = tmp_path_factory.mktemp("ffwpreset") / "run"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=out,
        splits=toy_splits,
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
    )
    return out


@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_the_paper_preset_is_the_papers_gates_alone(mode):
    cfg = FFWConfig.from_preset("paper", mode=mode)
    assert cfg.adversary == "head" and cfg.condition_on_target is False
    assert (cfg.tune_epochs, cfg.erase, cfg.refit_head) == (0, "none", False)  # no weight changed
    assert (cfg.tau_init, cfg.tau_decay, cfg.max_epochs, cfg.refine_patience) == (1.0, 0.5, None, 0)
    assert (cfg.max_levels, cfg.max_epochs_per_level, cfg.patience) == (20, 10, 2)  # the bench's --full schedule
    assert (cfg.learn_temperature, cfg.scale_free_dependence, cfg.include_head) == (False, False, False)
    assert cfg.gamma == 10.0 and cfg.selection == "objective"


@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_the_fast_preset_is_the_default_pipeline_with_fewer_epochs(mode):
    fast, default = FFWConfig.from_preset("fast", mode=mode), FFWConfig(mode=mode)
    # the same stages (tuning, eraser, refit, the choice) and bias term; fewer search and tuning epochs
    assert (fast.tune_epochs, fast.erase, fast.refit_head, fast.compare_ungated, fast.adversary) == (
        3,
        default.erase,
        True,
        True,
        default.adversary,
    )
    assert fast.max_epochs is not None and default.max_epochs is not None and fast.max_epochs < default.max_epochs
    assert fast.tune_epochs < default.tune_epochs and fast.tau_init < default.tau_init
    # the budget still reaches the same near-hard temperature, one epoch per level
    assert fast.planned_levels() == fast.max_epochs and fast.level_cap() == 1 and fast.tau_final == default.tau_final


@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_the_default_preset_is_ffwconfigs_defaults(mode):
    assert FFWConfig.from_preset("default", mode=mode) == FFWConfig(mode=mode)
    assert FFWConfig.from_preset() == FFWConfig() and dict(FFW_PRESETS["default"]) == {}


def test_presets_name_config_fields_and_keep_the_signature_defaults():
    names, defaults = {f.name for f in fields(FFWConfig)}, FFWConfig(mode="unstructured")
    for preset, settings in FFW_PRESETS.items():
        assert set(settings) <= names, preset
        for key in set(settings) & set(SIGNATURE_FIELDS):  # the entry points always pass these keywords' defaults
            assert settings[key] == getattr(defaults, key), (preset, key)
    with pytest.raises(TypeError):
        FFW_PRESETS["paper"]["adversary"] = "lda"  # frozen: one definition, not edited by a caller


def test_an_override_wins_over_the_preset_and_an_unknown_preset_is_refused():
    cfg = FFWConfig.from_preset("paper", adversary="lda", tune_epochs=2, max_epochs=4)
    assert (cfg.adversary, cfg.tune_epochs, cfg.max_epochs, cfg.erase) == ("lda", 2, 4, "none")
    with pytest.raises(ConfigError, match=r"unknown FFW preset 'bogus'.*default, paper, fast"):
        FFWConfig.from_preset("bogus")


def test_find_fantastic_weights_reads_the_preset(toy_run, toy_splits):
    model = load_run(toy_run).model
    kwargs = dict(head="fc", train=toy_splits.unbiased_train, val=toy_splits.unbiased_val, progress=False)
    with pytest.raises(ConfigError, match="unknown FFW preset"):
        find_fantastic_weights(model, preset="bogus", **kwargs)
    result = find_fantastic_weights(
        model, preset="paper", max_levels=1, max_epochs_per_level=1, head_pretrain_epochs=1, no_harm=False, **kwargs
    )
    assert result.config.adversary == "head" and result.config.max_levels == 1  # the keyword won
    assert result.tune is None and result.eraser is None and result.head_refit is None


def _configs_built(monkeypatch) -> list[FFWConfig]:
    """Record the FFWConfig that ffw_run builds, and stop before the run is loaded."""
    built: list[FFWConfig] = []

    class Recording(FFWConfig):
        def __post_init__(self) -> None:
            super().__post_init__()
            built.append(self)

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(ffw_run_module, "FFWConfig", Recording)
    monkeypatch.setattr(ffw_run_module, "load_run", stop)
    return built


def test_without_preset_the_cli_config_is_todays(monkeypatch, tmp_path):
    built = _configs_built(monkeypatch)
    res = runner.invoke(app, ["ffw", str(tmp_path), "--mode", "unstructured", "--no-progress"])
    assert isinstance(res.exception, _Stop), res.output
    # today's command passed every option at its CLI default (cmd_ffw._D, as they were before presets)
    today = FFWConfig(
        mode="unstructured",
        gamma=10.0,
        include_head=False,
        seed=0,
        input_weights=False,
        tau_decay=0.5,
        max_levels=20,
        max_epochs_per_level=10,
        patience=1,
        gate_lr=0.1,
        adversary="lda",
        max_epochs=10,
        selection="objective",
        erase="conditional",
        refine_patience=0,
        refit_head=True,
        tune_epochs=8,
        tune_gamma=3.0,
        tune_lr=2e-3,
        tune_schedule="cosine",
        tune_batch_size=128,
        tune_shift=1,
    )
    assert len(built) == 1 and asdict(built[0]) == asdict(today)


def test_cli_options_typed_win_over_the_preset_and_the_rest_is_the_presets(monkeypatch, tmp_path):
    built = _configs_built(monkeypatch)
    args = ["ffw", str(tmp_path), "--mode", "structured", "--no-progress", "--preset", "paper"]
    assert isinstance(runner.invoke(app, args).exception, _Stop)
    assert asdict(built[-1]) == asdict(FFWConfig.from_preset("paper", mode="structured"))
    typed = [*args, "--tune-epochs", "3", "--max-epochs", "5", "--refit-head", "--patience", "1"]
    assert isinstance(runner.invoke(app, typed).exception, _Stop)
    cfg = built[-1]
    assert (cfg.tune_epochs, cfg.max_epochs, cfg.refit_head, cfg.patience) == (3, 5, True, 1)
    assert (cfg.adversary, cfg.erase, cfg.max_levels) == ("head", "none", 20)  # untyped: the preset's
    default_typed = ["ffw", str(tmp_path), "--mode", "unstructured", "--no-progress", "--max-epochs", "0"]
    assert isinstance(runner.invoke(app, default_typed).exception, _Stop)
    assert built[-1].max_epochs is None  # 0 still means no budget


def test_cli_fast_preset_and_a_typed_tau_init(monkeypatch, tmp_path):
    built = _configs_built(monkeypatch)
    args = ["ffw", str(tmp_path), "--mode", "unstructured", "--no-progress", "--preset", "fast"]
    assert isinstance(runner.invoke(app, args).exception, _Stop)
    assert asdict(built[-1]) == asdict(FFWConfig.from_preset("fast", mode="unstructured"))
    assert isinstance(runner.invoke(app, [*args, "--tau-init", "1"]).exception, _Stop)
    assert built[-1].tau_init == 1.0 and built[-1].tune_epochs == FFW_PRESETS["fast"]["tune_epochs"]


def test_an_unknown_preset_exits_2_before_any_compute(monkeypatch, capsys, tmp_path):
    built = _configs_built(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["debiaskit", "ffw", str(tmp_path), "--mode", "unstructured", "--preset", "bogus"])
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exc:
        main()  # the console script: a ConfigError is one line and exit code 2
    out, err = capsys.readouterr()
    assert exc.value.code == 2, out + err
    assert "unknown FFW preset 'bogus'; the presets are: default, paper, fast" in err
    assert not built and "Traceback" not in out + err  # refused before the config, the run or the search


def test_paper_preset_run_changes_no_weight_and_records_the_preset(toy_run, allow_harm):
    args = ["ffw", str(toy_run), "--mode", "unstructured", "--preset", "paper", "--no-progress", "--no-strong-probes"]
    res = runner.invoke(app, [*args, "--max-levels", "2", "--max-epochs-per-level", "1"])
    assert res.exit_code == 0, res.output
    out = toy_run / "ffw-unstructured-g10-paper"  # never the default preset's folder
    info = json.loads((out / "ffw.json").read_text())
    assert info["preset"] == "paper" and "Preset: paper." in (out / "report.md").read_text()
    config = info["search"]["config"]
    assert (config["adversary"], config["tune_epochs"], config["erase"], config["refit_head"]) == (
        "head",
        0,
        "none",
        False,
    )
    assert config["max_levels"] == 2 and config["max_epochs"] is None  # typed option won; the rest the preset's
    assert info["search"]["tune"] is None and info["search"]["head_refit"] is None
    model, vanilla = load_ffw_model(out), load_run(toy_run).model
    masks = load_masks(out / "masks.safetensors")
    assert any(bool((m == 0).any()) for m in masks.values())  # something was pruned: the check below bites
    exported, original = model.state_dict(), vanilla.state_dict()
    assert exported.keys() == original.keys()
    for key, value in original.items():
        layer = key.rsplit(".", 1)[0]
        expected = value * masks[layer].to(value.dtype) if key.endswith(".weight") and layer in masks else value
        assert torch.equal(exported[key], expected), key  # every weight the original's, or 0 where masked


def test_every_cli_option_a_preset_sets_is_passed_only_when_typed():
    import inspect

    from debiaskit.cli.cmd_ffw import _PRESET_OPTIONS, ffw

    options = set(inspect.signature(ffw).parameters)
    for settings in FFW_PRESETS.values():
        for key in set(settings) & options:  # an always-passed option would hide the preset's value
            assert key in _PRESET_OPTIONS or key in SIGNATURE_FIELDS, key
