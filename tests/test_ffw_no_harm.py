"""Do no harm: FFW never hands back a model worse than the one it was given, nor a collapsed one; the report's
sentences follow from its own table; an FFW folder can be audited."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from debiaskit._io import check_output
from debiaskit.audit import AuditReport, chance_floor, to_markdown
from debiaskit.data import make_splits
from debiaskit.errors import NO_IMPROVEMENT_EXIT, NoImprovementError
from debiaskit.ffw import FFW_FOLDER, FFWConfig, _pipeline, _search, find_fantastic_weights, save_result
from debiaskit.ffw._harm import ChanceFloor, ValMeasure, group_accuracy, verdict
from debiaskit.ffw._run import probe_verdict, report_markdown
from debiaskit.train import TrainConfig, train_run
from test_ffw_search import Planted, _planted

FAST = ["--max-levels", "2", "--max-epochs-per-level", "1", "--no-progress"]
GATES_ALONE = ["--tune-epochs", "0", "--erase", "none", "--no-refit-head"]


@pytest.fixture(scope="module")
def usable_run(tmp_path_factory):
    """A vanilla model that learnt some of the task (D^u_val 39 %, above the near-chance floor of 21.5 %)."""
    splits = make_splits("biased-toy", params={"rho": 0.8}, seed=0, unbiased_size=600)
    out = tmp_path_factory.mktemp("noharm") / "run"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.8},
        out=out,
        splits=splits,
        model="simple-conv-small",
        config=TrainConfig(epochs=2, seed=0),
        progress=False,
    )
    return out


@pytest.fixture
def collapse(monkeypatch):
    """Every candidate the search produces is a constant network: after each epoch every gate is set to prune."""
    real = _search._Search.train_epoch

    def collapsed(self):
        stats = real(self)
        with torch.no_grad():
            for gate in self.gated.gates.values():
                gate.m.fill_(-1.0)
        return stats

    monkeypatch.setattr(_search._Search, "train_epoch", collapsed)


def test_a_collapsed_candidate_is_never_selected_and_the_unchanged_model_is_not_written(
    usable_run, collapse, cli, tmp_path
):
    out = tmp_path / "ffw"
    code, text = cli("ffw", usable_run, "--mode", "unstructured", "--out", out, *FAST, *GATES_ALONE)
    assert code == NO_IMPROVEMENT_EXIT == 3, text
    assert not out.exists() and not (tmp_path / ".ffw.partial").exists()  # no model, no stale search
    # J preferred the constant networks; the selection kept the model as given, and said so
    assert "FFW found no sub-network better than your model; nothing was changed" in text
    assert "gates (epoch 0, the model as given)" in text and "What you can do" in text
    assert "--method groupdro" in text and "--mode structured" in text and "--unbiased-size" in text
    assert "Traceback" not in text


def test_a_near_chance_output_is_refused_with_every_stage_named(toy_run_dir, collapse, cli, tmp_path):
    # the 1-epoch MLP is itself near chance on D^u_val: every candidate is, and the output is a constant network
    out = tmp_path / "ffw"
    # (without the ungated candidate: the gated pipeline is then the only output)
    code, text = cli(
        "ffw", toy_run_dir, "--mode", "unstructured", "--out", out, "--tune-epochs", "0", "--no-compare-ungated", *FAST
    )
    assert code == 3, text
    assert not out.exists()
    assert "near chance" in text and "a collapsed network hides any bias" in text
    assert "Tried (D^u_val group-mean accuracy; your model" in text
    assert "gates (epoch" in text and "eraser + head refit" in text
    assert "below the majority-class rate" in text  # the 1-epoch MLP: 8.3 % vs 15.0 % on D^u_val


def test_the_ungated_candidate_replaces_a_collapsed_gated_pipeline_and_says_so(toy_run_dir, collapse, cli, tmp_path):
    # the same collapse with compare_ungated (the default): the eraser + head refit on the ungated model wins on
    # D^u_val, so that model is written - every weight kept, every mask 1 - and the report names both candidates
    out = tmp_path / "ffw"
    code, text = cli("ffw", toy_run_dir, "--mode", "unstructured", "--out", out, "--tune-epochs", "0", *FAST)
    assert code == 0, text
    info = json.loads((out / "ffw.json").read_text())
    choice = info["search"]["choice"]
    assert choice["kept"] == "ungated" and choice["ungated"]["group_mean"] > choice["gated"]["group_mean"]
    assert info["search"]["no_harm"]["final"]["stage"].startswith("no gates:")
    assert info["search"]["sparsity"]["overall"] == 0.0 and info["search"]["tune"] is None
    from debiaskit.ffw import load_masks

    assert all(bool((m == 1).all()) for m in load_masks(out / "masks.safetensors").values())
    report = (out / "report.md").read_text()
    assert "the model without gates was kept" in report and "Candidates (D^u_val group-mean accuracy)" in report
    # the near-chance gated candidate was never the one kept, even though it is listed
    assert choice["gated"]["accuracy"] < info["search"]["no_harm"]["floor"]["floor"]


def test_the_choice_rule_keeps_the_gated_pipeline_on_a_tie_and_never_a_near_chance_candidate():
    floor = ChanceFloor(chance=0.1, majority_rate=0.1, base=0.1, margin=0.2, floor=0.3)
    gated = _measure("g", 0.8, acc=0.8)
    assert _pipeline._choose(gated, _measure("u", 0.8, acc=0.8), floor).kept == "gated"
    assert _pipeline._choose(gated, _measure("u", 0.81, acc=0.8), floor).kept == "ungated"
    collapsed = _measure("u", 0.9, acc=0.2)  # a higher group mean, but near chance
    assert _pipeline._choose(gated, collapsed, floor).kept == "gated"
    low = _measure("g", 0.95, acc=0.1)
    assert _pipeline._choose(low, _measure("u", 0.5, acc=0.6), floor).kept == "ungated"


def _measure(stage: str, mean: float, *, acc: float = 0.9) -> ValMeasure:
    return ValMeasure(stage=stage, group_mean=mean, group_mean_se=0.02, groups=4, smallest_group=2, accuracy=acc)


def _good_planted():
    """The planted model with a head that reads the target: near 100 % on D^u_val, nothing to gain."""
    model = Planted().eval()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0]]))
    return model


def test_the_python_api_raises_with_the_per_stage_record_or_returns_the_verdict_when_asked(collapse):
    train, val = _planted(600, rho=0.5, seed=1, name="u_train"), _planted(300, rho=0.5, seed=2, name="u_val")
    kw = dict(
        train=train,
        val=val,
        mode="unstructured",
        max_levels=2,
        max_epochs_per_level=1,
        batch_size=100,
        tune_epochs=0,
        erase="none",
        refit_head=False,
        progress=False,
    )
    with pytest.raises(NoImprovementError) as err:
        find_fantastic_weights(_good_planted(), **kw)
    record = err.value.record
    assert record["reason"] == "unchanged" and not record["accepted"]
    assert [s["stage"] for s in record["stages"]] == ["input model", "gates (epoch 0, the model as given)"]
    assert err.value.result.selected["epoch"] == 0  # the refused result, for inspection only
    assert err.value.exit_code == 3
    returned = find_fantastic_weights(_good_planted(), no_harm=False, **kw)  # the benchmark harnesses' way
    assert returned.no_harm.reason == "unchanged" and returned.summary()["no_harm"] == returned.no_harm.to_json()
    # inplace=True: a refused output never reaches the user's model (the planted one is near chance itself, so the
    # collapsed candidates are all there is: the masks that would have been baked in are all zeros)
    mine = Planted().eval()
    state = {k: v.clone() for k, v in mine.state_dict().items()}
    with pytest.raises(NoImprovementError, match="near chance"):
        find_fantastic_weights(mine, inplace=True, **kw)
    assert all(torch.equal(v, mine.state_dict()[k]) for k, v in state.items())
    baked = find_fantastic_weights(mine, inplace=True, no_harm=False, **kw)
    assert baked.model is mine and float(mine.body[1].weight.detach().abs().sum()) == 0.0


def test_the_python_api_accepts_a_real_improvement(tmp_path, cli):
    train, val = _planted(600, rho=0.5, seed=1, name="u_train"), _planted(300, rho=0.5, seed=2, name="u_val")
    result = find_fantastic_weights(
        Planted().eval(),
        train=train,
        val=val,
        mode="structured",
        max_levels=8,
        max_epochs_per_level=3,
        batch_size=100,
        gate_lr=0.5,
        max_epochs=20,
        progress=False,
    )
    rec = result.no_harm
    assert rec.accepted and rec.stages[-1].group_mean > rec.stages[0].group_mean + 0.3
    save_result(result, tmp_path / "saved")  # from Python: no data record, so the CLI cannot rebuild the data
    code, text = cli("audit", tmp_path / "saved")
    assert code == 2 and "records no data" in text and not (tmp_path / "saved" / "audit").exists()


def test_the_tolerance_is_one_smoothed_standard_error_of_the_input_s_group_mean():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    b = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    pred = torch.tensor([0, 1, 0, 0, 1, 1, 0, 0])  # groups (0,0) 1/2, (0,1) 2/2, (1,0) 2/2, (1,1) 0/2
    g = group_accuracy(pred, y, b, stage="s")
    assert g.group_mean == pytest.approx(0.625) and g.accuracy == pytest.approx(5 / 8) and g.groups == 4
    q = torch.tensor([2 / 4, 3 / 4, 3 / 4, 1 / 4])
    assert g.group_mean_se == pytest.approx(float((q * (1 - q) / 2).sum().sqrt() / 4))
    # the records ffw.json holds: today's keys, in today's order
    assert list(g.to_json()) == ["stage", "group_mean", "group_mean_se", "groups", "smallest_group", "accuracy"]
    floor = ChanceFloor.of(y, 2)
    assert floor.base == 0.5 and floor.floor == pytest.approx(0.5 + 2 * (0.25 / 8) ** 0.5)
    assert floor.to_json() == chance_floor(y, 2) and list(floor.to_json()) == list(chance_floor(y, 2))

    def stage(mean, acc=0.9):
        return _measure("s", mean, acc=acc)

    assert verdict([stage(0.80), stage(0.785)], floor, unchanged=False).accepted  # within one SE
    worse = verdict([stage(0.80), stage(0.77)], floor, unchanged=False)
    assert not worse.accepted and worse.reason == "worse"
    assert verdict([stage(0.80), stage(0.95, acc=0.6)], floor, unchanged=False).reason == "near_chance"
    assert verdict([stage(0.80), stage(0.80)], floor, unchanged=True).reason == "unchanged"


def test_the_selection_excludes_near_chance_candidates_before_comparing_j():
    s = SimpleNamespace(
        cfg=FFWConfig(mode="structured"),
        history=[],
        best=None,
        best_gates=None,
        floor=ChanceFloor.of(torch.arange(1000) % 10, 10),  # floor 12 %
        gated=SimpleNamespace(gate_tensors=lambda: {"g": torch.zeros(1)}),
    )
    for name in ("selection_score", "_score", "_keeps_task", "usable"):
        setattr(s, name, getattr(_search._Search, name).__get__(s))
    for epoch, task, objective in ((0, 0.33, 9.5), (1, 0.10, 2.3), (2, 0.25, 2.6)):
        rec = {"epoch": epoch, "val_hard": {"task": task, "objective": objective, "ce": objective}}
        s.history.append(rec)
        _search._Search.consider(s, rec)
    # epoch 1 (a dead network, the lowest J) is near chance: never selected, even though no candidate keeps the task
    assert s.best["epoch"] == 2 and s.history[1]["near_chance"] and not s.best["near_chance"]


def _verdict(**kw):
    base = dict(num_bias=10, before={"mlp": 0.9, "linear": 0.8}, task=(0.5, 0.6), counterfactual=(0.02, 0.01))
    return probe_verdict(**{**base, **kw})


def test_the_report_sentences_follow_from_the_table():
    ok = _verdict(after={"mlp": 0.12, "linear": 0.11})
    assert ok["bias_unreadable"] and "can no longer be read at the bottleneck" in ok["text"]
    assert "unbiased test split" in ok["text"]  # where it was measured
    cf_rose = _verdict(after={"mlp": 0.12, "linear": 0.11}, counterfactual=(0.01, 0.02))
    assert not cf_rose["bias_unreadable"] and "can no longer be read" not in cf_rose["text"]
    assert "counterfactual bias rose" in cf_rose["text"]
    task_fell = _verdict(after={"mlp": 0.12, "linear": 0.11}, task=(0.747, 0.555))
    assert not task_fell["bias_unreadable"] and "can no longer be read" not in task_fell["text"]
    assert "task accuracy fell (74.7 -> 55.5 %)" in task_fell["text"]
    more = _verdict(before={"mlp": 0.3, "linear": 0.2}, after={"mlp": 0.45, "linear": 0.25})
    assert "harder to read" not in more["text"] and more["reads_more"] == ["linear", "mlp"]
    assert "read the bias more than before" in more["text"] and "mlp 30.0 -> 45.0 %" in more["text"]
    less = _verdict(after={"mlp": 0.45, "linear": 0.15})
    assert "harder to read" in less["text"] and less["readable_by"] == ["mlp"]


def test_an_ffw_folder_is_audited_like_a_run(usable_run, cli, tmp_path):
    out = tmp_path / "ffw"
    code, text = cli(
        "ffw", usable_run, "--mode", "structured", "--out", out, "--tune-epochs", "0", "--no-strong-probes", *FAST
    )
    assert code == 0, text
    info = json.loads((out / "ffw.json").read_text())
    assert info["search"]["no_harm"]["accepted"] and "Do no harm: accepted" in (out / "report.md").read_text()
    code, text = cli("audit", out)
    assert code == 0, text
    audit = json.loads((out / "audit" / "audit.json").read_text())
    assert audit["task_accuracy"] == pytest.approx(info["after"]["task_accuracy"], abs=1e-6)  # the exported network
    assert audit["meta"]["ffw"] == str(out)
    code, text = cli("audit", out)  # the output rules of _io: an earlier report is replaced only with --force
    assert code == 2 and "--force" in text
    assert cli("audit", out, "--force")[0] == 0
    check_output(out, kind=FFW_FOLDER, force=True)  # a finished FFW folder holding its audit is still ours to replace
    # the FFW folder moved while its audit ran: nothing written, the old path not recreated (the commit re-checks it)
    import debiaskit.audit._run as audit_run

    real, moved = audit_run.audit_model, tmp_path / "moved"

    def audit_then_move(*a, **k):
        report = real(*a, **k)
        out.rename(moved)
        return report

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(audit_run, "audit_model", audit_then_move)
        code, text = cli("audit", out, "--out", tmp_path / "after-move")
    assert code == 2 and "was moved or replaced while debiaskit was running; nothing was written" in text, text
    assert not out.exists() and not (tmp_path / "after-move").exists()
    moved.rename(out)
    info["input_below_majority"] = "The input model is below the majority-class rate (72.0 % vs 73.8 % on x)"
    md = report_markdown(info)  # said before any number of the report
    assert -1 < md.find("**The input model is below the majority-class rate") < md.find("| | before (vanilla)")


def test_a_model_below_the_majority_class_rate_is_flagged_in_the_audit_report():
    report = AuditReport(task_accuracy=0.72, attributes=[], num_samples=500, eval_split="test", majority_rate=0.738)
    flag = report.below_majority()
    assert flag.startswith("The input model is below the majority-class rate (72.0 % vs 73.8 % on the test split)")
    assert flag in to_markdown(report)
    assert (
        AuditReport(
            task_accuracy=0.75, attributes=[], num_samples=500, eval_split="test", majority_rate=0.738
        ).below_majority()
        is None
    )


def test_a_structured_search_that_keeps_the_ungated_candidate_saves_a_folder_that_loads_back(
    toy_run_dir, collapse, cli, tmp_path
):
    # structured mode: the ungated candidate is the full-width input network plus the eraser and the refit head;
    # its folder records no new shapes, every unit mask is 1, and the model loads back with the same predictions
    out = tmp_path / "ffw"
    code, text = cli("ffw", toy_run_dir, "--mode", "structured", "--out", out, "--tune-epochs", "0", *FAST)
    assert code == 0, text
    info = json.loads((out / "ffw.json").read_text())
    assert info["search"]["choice"]["kept"] == "ungated" and info["model"]["shapes"] is None
    from debiaskit.data import iterate_batches
    from debiaskit.ffw import load_ffw_model, load_masks
    from debiaskit.runs import load_run

    assert all(bool((m == 1).all()) for m in load_masks(out / "masks.safetensors").values())
    net, run = load_ffw_model(out), load_run(toy_run_dir)
    x = next(iter(iterate_batches(run.splits().test, batch_size=64))).x
    with torch.no_grad():
        assert net(x).shape == run.model(x).shape
    # the full width (nothing removed), plus the eraser in front of the head when one was kept
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in run.model.parameters())
    assert info["parameters"]["after"] >= info["parameters"]["before"]
