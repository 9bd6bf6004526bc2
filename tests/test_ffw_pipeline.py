"""FFW as one pipeline of named stages: each stage's typed record (what it did, its D^u_val effect, its wall time),
in order, in ``FFWResult.stages`` and in ffw.json; ``wall_time_s`` covers the whole call, the search keeps its own."""

from __future__ import annotations

import json

import pytest

from debiaskit.ffw import find_fantastic_weights, save_result
from debiaskit.ffw._pipeline import STAGES, StageRecord
from test_ffw_search import FAST, Planted, _planted

ORDER = ["gates", "tune", "erase", "refit", "choice", "no_harm"]
# the keys ffw.json's "search" had before the stages were named (the report and the harnesses read them)
OLD_KEYS = {
    "mode",
    "config",
    "selected",
    "sparsity",
    "stop_reason",
    "wall_time_s",
    "epochs",
    "shapes",
    "eraser",
    "head_refit",
    "tune",
    "no_harm",
    "choice",
}


@pytest.fixture(scope="module")
def data():
    return _planted(600, rho=0.5, seed=1, name="u_train"), _planted(300, rho=0.5, seed=2, name="u_val")


def _run(data, **overrides):
    train, val = data
    settings = {**FAST, "tune_epochs": 1, "tune_batch_size": 100, **overrides}
    return find_fantastic_weights(
        Planted().eval(), train=train, val=val, mode="structured", progress=False, no_harm=False, **settings
    )


def test_every_stage_runs_in_order_with_its_record_and_the_wall_time_covers_them_all(data, tmp_path):
    result = _run(data)
    assert (
        [s.name for s in result.stages]
        == ORDER
        == [f.__name__.removeprefix("_").removesuffix("_stage") for f in STAGES]
    )
    assert all(isinstance(s, StageRecord) and s.wall_time_s >= 0 for s in result.stages)
    gates, tune, erase, refit, choice, no_harm = result.stages
    assert gates.ran and tune.ran and erase.ran and refit.ran and no_harm.ran  # every default stage is on
    # each stage's D^u_val numbers are those of the record it kept: the do-no-harm measures, the eraser's own
    measures = result.no_harm.stages
    assert gates.val_group_mean == measures[1].group_mean and gates.val_accuracy == measures[1].accuracy
    assert tune.val_group_mean == measures[2].group_mean
    assert erase.val_accuracy == pytest.approx(result.eraser.val_task_after, abs=1e-6)
    assert refit.val_group_mean == measures[3].group_mean
    assert no_harm.val_group_mean == result.no_harm.final.group_mean
    assert no_harm.did == ("accepted" if result.no_harm.accepted else f"refused ({result.no_harm.reason})")
    # the whole call: the search, then every stage after it
    assert result.search_time_s is not None and gates.wall_time_s >= result.search_time_s
    assert result.wall_time_s >= result.search_time_s + sum(s.wall_time_s for s in result.stages[1:])
    # ffw.json: every key it had, plus the stages and the search's own time
    save_result(result, tmp_path / "f")
    search = json.loads((tmp_path / "f" / "ffw.json").read_text())["search"]
    assert OLD_KEYS <= set(search) and search["search_time_s"] == result.search_time_s
    assert [s["name"] for s in search["stages"]] == ORDER and search["stages"][0] == gates.to_json()
    assert search["tune"]["chosen_epoch"] == result.tune.chosen_epoch and search["eraser"]["rank"] == result.eraser.rank
    assert search["head_refit"] == result.head_refit.to_json() and search["no_harm"] == result.no_harm.to_json()


def test_a_stage_that_is_off_says_so_and_has_no_numbers(data):
    result = _run(data, tune_epochs=0, erase="none", refit_head=False)
    gates, tune, erase, refit, choice, no_harm = result.stages
    for stage in (tune, erase, refit, choice):  # compare_ungated needs the after-gate stages: nothing to compare
        assert not stage.ran and stage.did == "off" and stage.val_group_mean is None and stage.val_accuracy is None
    assert gates.ran and no_harm.ran and no_harm.val_group_mean == gates.val_group_mean
    assert result.tune is None and result.eraser is None and result.head_refit is None and result.choice is None
    assert result.summary()["stages"][1] == {
        "name": "tune",
        "ran": False,
        "did": "off",
        "val_group_mean": None,
        "val_accuracy": None,
        "wall_time_s": tune.wall_time_s,
    }
