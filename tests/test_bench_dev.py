"""`debiaskit bench dev`: the development suite and the ablation of FFW's stages, at the smoke budget on toy data;
the watermark recipe's bias is coded by position alone; the torchvision-style ResNet goes through FFW's structure
analysis in both modes."""

from __future__ import annotations

import json

import pytest
import torch

import debiaskit.bench._dev as dev
from debiaskit.data import make_splits
from debiaskit.data._recipes import WATERMARK_SIZE, get_recipe, stripes_grating, watermark_corners
from debiaskit.errors import ConfigError, DebiaskitError
from debiaskit.ffw import _pipeline, analyse_structure, install_gates
from debiaskit.models import build_model

CELLS = ("colored-mnist-1pct", "biased-mnist-0.99")  # an MLP and a CNN: the cheapest two


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The MLP cell at the smoke budget, every pipeline (the slow test adds the CNN cell to the same root)."""
    root = tmp_path_factory.mktemp("dev")
    # the smoke budget's 1-epoch toy models are near chance, so the guarded rows (ffw-default, ffw-structured) would
    # be refused: the suite's mechanics are tested with FFW's guard recorded, not enforced (the guard:
    # test_ffw_no_harm.py; the guarded flag: test_guarded_rows_pass_the_guard_and_the_stages_do_not)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_pipeline, "enforce", lambda record, result: None)
        results = dev.run_dev_suite(root=root, budget="smoke", cells=CELLS[:1], seeds=(0,), echo=lambda s: None)
    return root, results


def _check_records(root, cell, recs):
    assert set(recs) == {*dev.BASELINES, *dev.VARIANTS}
    for name, rec in recs.items():
        assert "refused" not in rec, (cell, name, rec)
        assert 0.0 <= rec["val_group_mean"] <= 1.0 and 0.0 <= rec["test_worst_group"] <= rec["test_acc"] + 1e-9
        assert (root / "smoke" / cell / "seed0" / f"{name}.json").is_file()
    assert set(recs["ffw-default"]["probes"]) == set(dev.BUDGET_PROBES["smoke"])
    assert recs["majority"]["test_acc"] == pytest.approx(0.1, abs=0.05)  # one class of ten, balanced test
    # the stages did what they say: an eraser where one is on, the refit alone keeps the vanilla bottleneck
    assert recs["erase+refit"]["erase_rank"] > 0 and recs["dfr"]["erase_rank"] is None
    assert recs["gates-only"]["tune_epoch"] is None and recs["ffw-default"]["tune_epoch"] is not None
    assert recs["dfr"]["probes"] == recs["vanilla"]["probes"]


def test_guarded_rows_pass_the_guard_and_the_stages_do_not(tmp_path, monkeypatch):
    seen = {}

    def spy(*args, config, no_harm=True, **kwargs):  # what each row asks of find_fantastic_weights, then stop
        seen["gates-only" if config.tune_epochs == 0 else "ffw-default"] = no_harm
        raise DebiaskitError("stopped by the test")

    monkeypatch.setattr(dev, "find_fantastic_weights", spy)
    dev.run_dev_suite(
        root=tmp_path / "dev",
        budget="smoke",
        cells=CELLS[:1],
        seeds=(0,),
        variants=("ffw-default", "gates-only"),
        echo=lambda s: None,
    )
    assert seen == {"ffw-default": True, "gates-only": False}


def test_smoke_suite_runs_every_pipeline(suite):
    root, results = suite
    _check_records(root, CELLS[0], results[CELLS[0]][0])


@pytest.mark.slow
def test_smoke_suite_runs_every_pipeline_on_two_cells_and_reports_both(suite):
    root, _ = suite
    results = dev.run_dev_suite(root=root, budget="smoke", cells=CELLS, seeds=(0,), echo=lambda s: None)
    for cell in CELLS:
        _check_records(root, cell, results[cell][0])
    text = dev.write_dev_results(root=root, budget="smoke", command="c", wall_time_s=1.0).read_text()
    assert all(f"### {cell}" in text for cell in CELLS)
    summary = json.loads((root / "smoke" / "results.json").read_text())["summary"]
    assert all(set(r["per_cell"]) == set(CELLS) for r in summary)


def test_suite_resumes_from_its_records_without_recomputing(suite, monkeypatch):
    root, results = suite

    def boom(*a, **k):
        raise AssertionError("recomputed a cached record")

    for name in ("find_fantastic_weights", "apply_stages", "train_run", "load_run"):
        monkeypatch.setattr(dev, name, boom)
    again = dev.run_dev_suite(root=root, budget="smoke", cells=CELLS[:1], seeds=(0,), echo=lambda s: None)
    assert again[CELLS[0]][0] == json.loads(json.dumps(results[CELLS[0]][0]))  # the records as written (JSON)


def test_a_lost_record_is_rebuilt_from_its_parent_alone(suite, monkeypatch):
    root, results = suite
    folder = root / "smoke" / CELLS[0] / "seed0"
    (folder / "gates+tune.json").unlink()
    calls = []
    real = dev.find_fantastic_weights
    monkeypatch.setattr(dev, "find_fantastic_weights", lambda *a, **k: calls.append(k["config"]) or real(*a, **k))
    lines = []
    again = dev.run_dev_suite(root=root, budget="smoke", cells=CELLS[:1], seeds=(0,), echo=lines.append)
    assert [c.tune_epochs for c in calls] == [0]  # gates-only again (in memory), nothing else searched
    assert lines == [
        f"[{CELLS[0]} seed 0] gates+tune: D^u_val group mean "
        f"{100 * again[CELLS[0]][0]['gates+tune']['val_group_mean']:.1f}"
    ]


def test_report_ranks_worst_cell_first_then_mean_and_has_every_cell(suite):
    root, _ = suite
    text = dev.write_dev_results(
        root=root, budget="smoke", command="debiaskit bench dev --budget smoke", wall_time_s=1.0
    ).read_text()
    assert f"### {CELLS[0]}" in text
    for name in (*dev.BASELINES, *dev.VARIANTS):
        assert f"| {name} |" in text
    summary = json.loads((root / "smoke" / "results.json").read_text())["summary"]
    keys = [(-r["worst"], -r["mean"]) for r in summary]
    assert keys == sorted(keys) and len(summary) == len(dev.BASELINES) + len(dev.VARIANTS)


def _rec(cell, pipeline, val, **extra):
    return {"cell": cell, "seed": 0, "pipeline": pipeline, "val_group_mean": val, **extra}


def test_summary_puts_the_better_worst_cell_first_and_scores_a_refusal_as_vanilla():
    results = {
        "a": {
            0: {
                "vanilla": _rec("a", "vanilla", 0.4),
                "ffw-default": _rec("a", "ffw-default", 0.95),
                "dfr": _rec("a", "dfr", 0.7),
            }
        },
        "b": {
            0: {
                "vanilla": _rec("b", "vanilla", 0.6),
                "ffw-default": _rec("b", "ffw-default", 0.5),
                "dfr": {"cell": "b", "seed": 0, "pipeline": "dfr", "refused": "DebiaskitError: no gain"},
            }
        },
    }
    rows = {r["pipeline"]: r for r in dev.summary_rows(results)}
    assert rows["dfr"]["per_cell"]["b"] == 0.6 and rows["dfr"]["refused"] == 1  # the vanilla model it leaves
    assert [r["pipeline"] for r in dev.summary_rows(results)] == ["dfr", "ffw-default", "vanilla"]
    assert rows["ffw-default"]["worst_cell"] == "b"


def test_a_pipeline_that_raises_is_recorded_as_refused_with_its_children(tmp_path, monkeypatch):
    class NoGain(DebiaskitError):
        pass

    def refuse(*a, **k):
        raise NoGain("FFW found nothing better than the vanilla model on D^u_val")

    monkeypatch.setattr(dev, "find_fantastic_weights", refuse)
    variants = ("gates-only", "gates+tune", "dfr")
    res = dev.run_dev_suite(
        root=tmp_path / "dev", budget="smoke", cells=CELLS[:1], seeds=(0,), variants=variants, echo=lambda s: None
    )[CELLS[0]][0]
    assert res["gates-only"]["refused"] == "NoGain: FFW found nothing better than the vanilla model on D^u_val"
    assert res["gates+tune"]["refused"] == res["gates-only"]["refused"]  # built on it
    assert "refused" not in res["dfr"]
    text = dev.write_dev_results(root=tmp_path / "dev", budget="smoke", command="c", wall_time_s=0.0).read_text()
    assert "| gates-only | refused |" in text and "refused 1/1: NoGain" in text


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"budget": "huge"}, "unknown budget 'huge'"),
        ({"cells": ("biased-mnist-0.5",)}, "unknown cell"),
        ({"variants": ("ffw-fancy",)}, "unknown variant"),
        ({"seeds": ()}, "no seed"),
    ],
)
def test_a_bad_selection_is_refused_before_any_folder_is_made(tmp_path, bad, match):
    kwargs = {"budget": "smoke", "cells": CELLS[:1], "variants": ("dfr",), "seeds": (0,), **bad}
    with pytest.raises(ConfigError, match=match):
        dev.run_dev_suite(root=tmp_path / "dev", echo=lambda s: None, **kwargs)
    assert not (tmp_path / "dev").exists()


def test_watermark_bias_is_coded_by_position_alone():
    recipe = get_recipe("watermark")
    blank = torch.zeros(10, 28, 28, dtype=torch.uint8)
    img = recipe.render(blank, torch.arange(10), seed=0)[:, 0]
    corners = watermark_corners(28, 28)
    assert len(set(corners)) == 10  # ten distinct places
    for b, (r, c) in enumerate(corners):
        lit = (img[b] == 255).nonzero()
        assert len(lit) == WATERMARK_SIZE**2 and int(img[b].sum()) == 255 * WATERMARK_SIZE**2  # same patch
        assert (lit.min(0).values.tolist(), lit.max(0).values.tolist()) == ([r, c], [r + 3, c + 3])
        on_border = r in (0, 28 - WATERMARK_SIZE) or c in (0, 28 - WATERMARK_SIZE)
        assert on_border
    # the place of the brightest 4x4 window decodes b on real splits; its brightness does not
    splits = make_splits("watermark-toy", params={"rho": 0.99}, seed=0, unbiased_size=300, test_size=100)
    x, b = splits.test.images[:, 0].float(), splits.test.b
    windows = torch.stack([x[:, r : r + 4, c : c + 4].mean((1, 2)) for r, c in corners], 1)
    assert bool((windows.argmax(1) == b).all())
    assert torch.allclose(windows.max(1).values, torch.full((len(b),), 255.0))


def test_stripes_recipe_draws_section_7s_grating_where_the_item_is_darker():
    recipe = get_recipe("stripes")
    dark = recipe.render(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.tensor([0, 7]), seed=0)[:, 0]
    assert torch.equal(dark[0], (110 * stripes_grating(0)).round().to(torch.uint8))
    assert not torch.equal(dark[0], dark[1])
    bright = recipe.render(torch.full((1, 28, 28), 255, dtype=torch.uint8), torch.tensor([3]), seed=0)
    assert bool((bright == 255).all())


@pytest.mark.parametrize("name", ["tv-resnet-small", "residual-cnn"])
def test_residual_zoo_models_are_gated_in_both_modes(name):
    model = build_model(name, num_classes=10, input_shape=(1, 28, 28))
    x = torch.randn(2, 1, 28, 28)
    structure = analyse_structure(model, x, model.head_name)
    assert structure.kind == "residual" and not structure.ungated  # every conv is gated, the stream shared
    for mode in ("unstructured", "structured"):
        gated = install_gates(model, mode=mode, head=model.head_name, example=x)
        assert len(gated.gates) > 0
    if name == "tv-resnet-small":  # the shared relu is called twice per block, in place, after out += identity
        block = model.layer2[0]
        assert block.relu.inplace and block.downsample is not None and isinstance(model.fc, torch.nn.Linear)
