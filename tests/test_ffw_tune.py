"""FFW's weight tuning after the gates (``tune_epochs``): what it trains, what it holds, what D^u_val chooses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import randomise_batchnorm
from debiaskit.cli import app
from debiaskit.errors import ConfigError
from debiaskit.ffw import FFWConfig, _tune, find_fantastic_weights
from debiaskit.models import accuracy

sys.path.insert(0, str(Path(__file__).parent))
from user_models import small_vgg  # noqa: E402  (a user's model: conv-BN-SiLU, head "logits")

runner = CliRunner()
# no_harm=False: the tuning's mechanics on untrained models (near chance: the guard would refuse them; it is tested in
# test_ffw_no_harm.py)
FAST = dict(max_levels=2, max_epochs_per_level=1, head_pretrain_epochs=2, batch_size=64, progress=False, no_harm=False)
PLAIN = dict(erase="none", refit_head=False)  # the tuned network itself, nothing after it
SCORE_VAL = _tune._score_val


def _model():
    torch.manual_seed(0)
    return randomise_batchnorm(small_vgg(num_classes=10, in_channels=3))


def _run(splits, **kw):
    return find_fantastic_weights(
        _model(), head="logits", train=splits.unbiased_train, val=splits.unbiased_val, **{**FAST, **PLAIN, **kw}
    )


def _scores_by_epoch(monkeypatch, scores):
    """Make D^u_val's selection score of tuning epoch e equal scores[e] (the other numbers stay real)."""
    real, calls = SCORE_VAL, []

    def scored(model, search, device):
        rec = real(model, search, device)
        rec["selection_score"] = scores[len(calls)]
        calls.append(rec)
        return rec

    monkeypatch.setattr(_tune, "_score_val", scored)


def _gated_weights(model):
    return {n: p.detach() for n, p in model.named_parameters() if p.dim() > 1}


def test_the_kept_weights_move_the_pruned_ones_stay_zero_and_batchnorm_statistics_are_kept(toy_splits, monkeypatch):
    untuned = _run(toy_splits, tune_epochs=0)
    _scores_by_epoch(monkeypatch, [0.0, 1.0, 2.0])  # D^u_val prefers the last epoch
    tuned = _run(toy_splits, tune_epochs=2)
    assert all(torch.equal(untuned.masks[k], tuned.masks[k]) for k in untuned.masks)  # the same search
    assert tuned.tune.chosen_epoch == 2 and [h["epoch"] for h in tuned.tune.history] == [0, 1, 2]
    before, after = _gated_weights(untuned.model), _gated_weights(tuned.model)
    pruned = sum(int((w == 0).sum()) for w in before.values())
    assert pruned > 0 and tuned.tune.held_zero == pruned
    for name, w in before.items():
        assert torch.equal(after[name][w == 0], torch.zeros_like(after[name][w == 0])), name  # pruned: still 0
    assert any(not torch.equal(before[n][before[n] != 0], after[n][before[n] != 0]) for n in before)  # kept: trained
    buffers = dict(untuned.model.named_buffers())
    assert all(torch.equal(buffers[n], b) for n, b in tuned.model.named_buffers())  # BN running statistics frozen
    assert not any(p.requires_grad for p in tuned.model.parameters()) and not tuned.model.training
    # the network returned is the chosen epoch's: its D^u_val accuracy is the one recorded for it
    assert accuracy(tuned.model, toy_splits.unbiased_val) == pytest.approx(tuned.tune.val_after["task"], abs=1e-6)
    assert tuned.tune.val_after is not tuned.tune.history[0]["val"]


def test_the_state_d_u_val_prefers_is_kept_and_the_gates_state_when_no_epoch_beats_it(toy_splits, monkeypatch):
    untuned = _run(toy_splits, tune_epochs=0)
    _scores_by_epoch(monkeypatch, [0.0, 5.0, 1.0, 2.0])  # the first tuned epoch is the best
    middle = _run(toy_splits, tune_epochs=3)
    assert middle.tune.chosen_epoch == 1
    assert accuracy(middle.model, toy_splits.unbiased_val) == pytest.approx(
        middle.tune.history[1]["val"]["task"], abs=1e-6
    )
    _scores_by_epoch(monkeypatch, [9.0, 1.0, 2.0])  # nothing beats the gates' state: the weights are unchanged
    kept = _run(toy_splits, tune_epochs=2)
    assert kept.tune.chosen_epoch == 0
    ref = untuned.model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in kept.model.state_dict().items())


def test_the_selection_score_is_the_search_rule_on_d_u_val(toy_splits):
    res = _run(toy_splits, tune_epochs=2, tune_schedule="cosine")
    for h in res.tune.history:
        v = h["val"]
        assert v["objective"] == pytest.approx(v["ce"] + 10.0 * v["dependence"])
        assert v["selection_score"] == pytest.approx(-v["objective"])
    best = max(res.tune.history, key=lambda h: h["val"]["selection_score"])
    assert res.tune.chosen_epoch == best["epoch"]
    acc = _run(toy_splits, tune_epochs=2, selection="accuracy")
    assert all(h["val"]["selection_score"] == h["val"]["task"] for h in acc.tune.history)
    read = _run(toy_splits, tune_epochs=1, selection="readability")  # the unconditioned reading, as the search's
    assert all(h["val"]["selection_score"] != -h["val"]["objective"] for h in read.tune.history)


def test_tuning_is_reproducible_and_off_means_the_gates_alone(toy_splits):
    a, b = _run(toy_splits, tune_epochs=1), _run(toy_splits, tune_epochs=1)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    off = _run(toy_splits, tune_epochs=0)
    assert off.tune is None and off.summary()["tune"] is None


def test_a_diverging_tuning_stops_and_keeps_the_best_state_so_far(toy_splits, monkeypatch):
    untuned = _run(toy_splits, tune_epochs=0)
    real = _tune.probe_free_term

    def nan_term(config, d, kind):  # the tuning's bias term goes non-finite (the search's is untouched)
        term = real(config, d, kind)
        term.penalty = lambda z, *a, **k: z.sum() * float("nan")
        return term

    monkeypatch.setattr(_tune, "probe_free_term", nan_term)
    res = _run(toy_splits, tune_epochs=3)
    assert res.tune.chosen_epoch == 0 and len(res.tune.history) == 1 and "non-finite" in res.tune.stopped
    ref = untuned.model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in res.model.state_dict().items())  # no NaN step was taken


def test_structured_tuning_with_two_bias_attributes_holds_the_input_weights_zeros(multicolor_toy_splits):
    def run(epochs):
        torch.manual_seed(0)
        return find_fantastic_weights(
            randomise_batchnorm(small_vgg(num_classes=10, in_channels=3)),
            head="logits",
            train=multicolor_toy_splits.unbiased_train,
            val=multicolor_toy_splits.unbiased_val,
            mode="structured",
            input_weights=True,
            tune_epochs=epochs,
            **FAST,
            **PLAIN,
        )

    untuned, tuned = run(0), run(1)
    assert tuned.tune is not None and len(tuned.tune.history) == 2
    before, after = _gated_weights(untuned.model), _gated_weights(tuned.model)
    zeros = {n: w == 0 for n, w in before.items()}
    assert tuned.tune.held_zero == sum(int(z.sum()) for z in zeros.values()) > 0  # the input weights' zeros
    assert all(not bool(after[n][z].any()) for n, z in zeros.items())


def test_bad_tuning_settings_are_refused(toy_splits):
    for bad in (
        dict(tune_epochs=-1),
        dict(tune_lr=0.0),
        dict(tune_gamma=-1.0),
        dict(tune_schedule="step"),
        dict(tune_batch_size=0),
        dict(tune_shift=-1),
    ):
        with pytest.raises(ConfigError):
            FFWConfig(**bad)
    with pytest.raises(ConfigError, match="tune_epochs=0"):
        find_fantastic_weights(
            _model(),
            head="logits",
            train=toy_splits.unbiased_train,
            val=toy_splits.unbiased_val,
            inplace=True,
            tune_epochs=1,
            **{**FAST, **PLAIN},
        )


def test_a_tuning_batch_that_does_not_divide_by_the_ranks_is_refused_before_the_search(toy_splits, monkeypatch):
    from debiaskit import _dist

    monkeypatch.setattr(_dist, "rank_and_world", lambda: (0, 3))  # as if under torchrun with 3 ranks
    from debiaskit.ffw import _search

    searched = []
    monkeypatch.setattr(_search, "install_gates", lambda *a, **k: searched.append(1))
    with pytest.raises(ConfigError, match="batch size 128"):
        find_fantastic_weights(
            _model(),
            head="logits",
            train=toy_splits.unbiased_train,
            val=toy_splits.unbiased_val,
            tune_epochs=1,
            **{**FAST, **PLAIN, "batch_size": 63},
        )
    assert not searched


def test_tuning_runs_on_its_own_batch_size_and_its_term_remembers_the_search_s_rows(toy_splits, monkeypatch):
    sizes, memories = [], []
    real_forward, real_term = _tune.forward_with_bottleneck, _tune.probe_free_term

    def forward(model, x, head):
        sizes.append(len(x))
        return real_forward(model, x, head)

    def term(cfg, d, kind):
        memories.append(cfg.memory)
        return real_term(cfg, d, kind)

    monkeypatch.setattr(_tune, "forward_with_bottleneck", forward)
    monkeypatch.setattr(_tune, "probe_free_term", term)
    res = _run(toy_splits, tune_epochs=1, tune_batch_size=16)  # the search: batches of 64, memory 8
    n = len(toy_splits.unbiased_train)
    assert sizes == [16] * (n // 16) + ([n % 16] if n % 16 else [])
    assert memories == [32]  # 8 x 64 rows, in batches of 16
    assert res.tune.batch_size == 16 and FFWConfig().tune_batch_size == 128


def test_shift_images_translates_each_image_with_replicated_edges_and_leaves_other_inputs_alone():
    x = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).view(2, 2, 3, 3)
    out = _tune.shift_images(x, torch.tensor([[0, 2], [1, 1]]), 1)
    # image 0: moved 1 down and 1 left (the top row and right column replicated); image 1: unchanged
    expected0 = torch.stack([torch.tensor([[1.0, 2, 2], [1, 2, 2], [4, 5, 5]]) + 9 * c for c in range(2)])
    assert torch.equal(out[0], expected0) and torch.equal(out[1], x[1])
    rows = torch.randn(4, 7)  # tabular rows, sequences: never shifted
    assert _tune.shift_images(rows, torch.zeros(4, 2, dtype=torch.long), 1) is rows
    assert _tune.shift_images(x, torch.zeros(2, 2, dtype=torch.long), 0) is x


def test_tuning_shifts_each_image_by_at_most_tune_shift_pixels_and_not_at_all_when_off(toy_splits, monkeypatch):
    calls, fed = [], []
    real_shift, real_forward = _tune.shift_images, _tune.forward_with_bottleneck

    def shift(x, offsets, k):
        out = real_shift(x, offsets, k)
        calls.append((x, offsets, k, out))
        return out

    def forward(model, x, head):
        fed.append(x)
        return real_forward(model, x, head)

    monkeypatch.setattr(_tune, "shift_images", shift)
    monkeypatch.setattr(_tune, "forward_with_bottleneck", forward)
    _run(toy_splits, tune_epochs=1, tune_shift=1)
    offsets = torch.cat([c[1] for c in calls])
    assert len(offsets) == len(toy_splits.unbiased_train) and all(c[2] == 1 for c in calls)
    assert int(offsets.min()) == 0 and int(offsets.max()) == 2  # up to one pixel either way ...
    assert bool((offsets != 1).any(1).float().mean() > 0.5)  # ... and most images moved (8 of 9 offsets do)
    tuned_inputs = fed[-len(calls) :]  # the tuning's forwards (after the search's and the scoring's)
    assert all(torch.equal(f, c[3]) for f, c in zip(tuned_inputs, calls))
    assert any(not torch.equal(c[0], c[3]) for c in calls)
    calls.clear()
    _run(toy_splits, tune_epochs=1, tune_shift=0)
    assert calls and all(c[3] is c[0] for c in calls)  # off: the batch itself


def test_the_cli_tunes_reports_and_records_it(toy_run_dir, tmp_path):
    out = tmp_path / "ffw"
    res = runner.invoke(
        app,
        [
            "ffw",
            str(toy_run_dir),
            "--mode",
            "unstructured",
            "--out",
            str(out),
            "--tune-epochs",
            "2",
            "--tune-gamma",
            "2",
            "--max-levels",
            "2",
            "--max-epochs-per-level",
            "1",
            "--no-strong-probes",
            "--no-compare-ungated",  # the gated pipeline's records (the ungated candidate has no tuning)
        ],
    )
    assert res.exit_code == 0, res.output
    assert "tune  1/2" in res.output and "tune  2/2" in res.output
    tune = json.loads((out / "ffw.json").read_text())["search"]["tune"]
    assert tune["epochs"] == 2 and tune["gamma"] == 2.0 and len(tune["history"]) == 3
    assert "Weight tuning (`--tune-epochs 2`)" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "batches of 128" in report and "shifted by up to 1 pixel" in report
    assert tune["batch_size"] == 128 and tune["shift"] == 1
    info = json.loads((out / "ffw.json").read_text())["search"]
    assert info["eraser"] is not None and info["head_refit"] is not None  # the steps after it ran on the tuned net


def test_the_cli_refuses_bad_tuning_settings_before_any_compute(toy_run_dir, tmp_path, cli):
    code, text = cli("ffw", toy_run_dir, "--mode", "unstructured", "--out", tmp_path / "x", "--tune-epochs", "-2")
    assert code == 2 and "tune_epochs" in text and "Traceback" not in text
    assert not (tmp_path / "x").exists()
    code, text = cli("ffw", toy_run_dir, "--mode", "unstructured", "--out", tmp_path / "x", "--tune-batch-size", "0")
    assert code == 2 and "tune_batch_size" in text and "Traceback" not in text
    assert not (tmp_path / "x").exists()


def test_interrupted_during_the_tuning_the_resumed_run_ends_with_the_same_network(toy_splits, tmp_path):
    reference = _run(toy_splits, tune_epochs=2)
    ckpt = tmp_path / "partial"

    def stop_in_tuning(event):
        if event["kind"] == "tune":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(toy_splits, tune_epochs=2, checkpoint_dir=ckpt, callback=stop_in_tuning)
    resumed = _run(toy_splits, tune_epochs=2, checkpoint_dir=ckpt, resume=True)  # the search is done: tuning again
    assert resumed.tune.chosen_epoch == reference.tune.chosen_epoch
    ref = reference.model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in resumed.model.state_dict().items())


def test_tabular_rows_are_tuned_as_they_are(monkeypatch):
    """A user's tabular model (rows, not images): the tuning runs and never shifts its inputs."""
    from collections import OrderedDict

    from torch import nn
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(0)
    y, b = torch.randint(0, 2, (400,), generator=gen), torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 12, generator=gen) + torch.stack([2.0 * y, 2.0 * b], 1).repeat(1, 6)
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(body=nn.Sequential(nn.Linear(12, 32), nn.ReLU()), out=nn.Linear(32, 2)))
    calls, real = [], _tune.shift_images

    def shift(x, offsets, k):
        out = real(x, offsets, k)
        calls.append((x, out))
        return out

    monkeypatch.setattr(_tune, "shift_images", shift)
    res = find_fantastic_weights(
        model,
        head="out",
        train=TensorDataset(x[:300], y[:300], b[:300]),
        val=TensorDataset(x[300:], y[300:], b[300:]),
        tune_epochs=1,
        **{**FAST, **PLAIN},
    )
    assert res.tune.shift == 1 and calls and all(out is rows for rows, out in calls)
