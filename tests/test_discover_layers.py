"""`debiaskit discover` beyond the bottleneck: early-layer geometry (--layer) and recorded training dynamics."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from debiaskit.cli import app
from debiaskit.discover import (
    candidate_layers,
    choose_layer,
    discover_from_dynamics,
    discover_pseudo_bias,
    discovery_quality,
    scan_layers,
)
from debiaskit.errors import ConfigError, DataError
from debiaskit.models import build_model
from debiaskit.runs import load_run
from debiaskit.train import DYNAMICS_FILE, DynamicsRecorder, TrainConfig, TrainingMethod, fit, load_dynamics, train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory):
    """An MLP trained long enough on biased toy digits to memorise most conflicting training samples."""
    out = tmp_path_factory.mktemp("memorised") / "run"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=out,
        model="mlp",
        unbiased_size=600,
        config=TrainConfig(epochs=25, lr=3e-3, seed=0),
        progress=False,
        record_dynamics=True,
    )
    return out


def test_auto_layer_finds_conflicts_the_bottleneck_lost(memorised_run):
    run = load_run(memorised_run)
    train = run.splits().train
    at_bottleneck = discover_pseudo_bias(run.model, train=train, head=run.head)["train"]
    auto = discover_pseudo_bias(run.model, train=train.without_bias_labels(), head=run.head, layer="auto")["train"]
    q_b, q_a = discovery_quality(at_bottleneck, train), discovery_quality(auto, train)
    assert auto.source != "bottleneck" and at_bottleneck.source == "bottleneck"
    assert q_a["recall"] >= q_b["recall"] + 0.2, (q_a, q_b)
    assert q_a["precision"] >= 0.9
    # bias labels play no part: the same flags from labelled and unlabelled data
    again = discover_pseudo_bias(run.model, train=train, head=run.head, layer="auto")["train"]
    assert torch.equal(again.pseudo_bias, auto.pseudo_bias) and torch.equal(again.conflict_score, auto.conflict_score)
    # the layer comparison on a random subset (memory) picks the same layer here; scores come from all samples
    found, scan = scan_layers(run.model, train=train, head=run.head, layer="auto", scan_samples=700)
    assert {r["samples"] for r in scan} == {700} and found["train"].source == auto.source
    assert found["train"].conflict_score.shape == (len(train),)


class _SharedActivation(torch.nn.Module):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.lin1, self.lin2, self.act, self.fc = (
            torch.nn.Linear(in_features, 16),
            torch.nn.Linear(16, 16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 10),
        )

    def forward(self, x):
        return self.fc(self.act(self.lin2(self.act(self.lin1(x.flatten(1))))))


def test_shared_module_is_skipped_by_auto_and_refused_by_name(toy_splits):
    torch.manual_seed(0)
    net = _SharedActivation(int(torch.tensor(toy_splits.train.input_shape).prod()))
    assert candidate_layers(net, head="fc") == ["act", "bottleneck"]
    _, scan = scan_layers(net, train=toy_splits.train, head="fc", layer="auto")
    assert [r["layer"] for r in scan] == ["bottleneck"]
    with pytest.raises(ConfigError, match="runs 2 times per forward pass"):
        discover_pseudo_bias(net, train=toy_splits.train, head="fc", layer="act")


def row(layer: str, flagged: int, share: float, score: float | None = 0.9) -> dict:
    """One layer's line of a discover scan, as choose_layer reads it."""
    return {"layer": layer, "flagged": flagged, "flagged_share": share, "mean_flagged_score": score}


def test_choose_layer_prefers_most_minority_flags():
    scan = [row("a", 700, 0.7), row("b", 50, 0.05), row("c", 50, 0.05), row("bottleneck", 3, 0.003)]
    assert choose_layer(scan) == "b"  # 'a' moves most samples out of their class cell: not class-structured
    assert choose_layer([row("a", 0, 0.0, None), row("bottleneck", 0, 0.0, None)]) == "bottleneck"


def test_choose_layer_ignores_layers_that_attract_their_flags_weakly():
    # the texture-biased residual CNN of benchmarks/byo_fashion_stripes.py (seed 0, 10,000 samples of D^b)
    scan = [
        row("block1", 1747, 0.175, 0.45),
        row("block2", 170, 0.017, 0.37),
        row("block3", 42, 0.004, 0.30),
        row("bottleneck", 42, 0.004, 0.30),
    ]
    assert choose_layer(scan) == "bottleneck"
    scan[1]["mean_flagged_score"] = 0.8
    assert choose_layer(scan) == "bottleneck"  # block2's flags do not persist at block3 (170 -> 42)
    scan[2]["flagged"] = 120
    assert choose_layer(scan) == "block2"


def test_choose_layer_ignores_flags_that_vanish_at_the_next_layer():
    # the same model, seed 1: block1 passes the score threshold, but 92 % of its flags are gone at block2
    # (true F1 on these samples: block1 0.07, block2 0.53, block3 = bottleneck 0.52)
    scan = [
        row("block1", 2270, 0.227, 0.571),
        row("block2", 187, 0.0187, 0.394),
        row("block3", 37, 0.0037, 0.313),
        row("bottleneck", 37, 0.0037, 0.313),
    ]
    assert choose_layer(scan) == "bottleneck"
    assert choose_layer(scan, persist_ratio=float("inf")) == "block1"  # the rule before
    # Biased MNIST rho 0.99 (simple-conv-small, 10,000 samples of D^b): flags persist until memorised
    mnist = [
        row(f"extracter.{i}", n, n / 1e4, s)
        for i, n, s in [(2, 110, 0.94), (5, 110, 0.81), (8, 96, 0.33), (11, 0, None)]
    ]
    assert choose_layer(mnist + [row("bottleneck", 0, 0.0, None)]) == "extracter.2"


def test_candidate_layers_and_unknown_layer(toy_splits):
    net = build_model("simple-conv-small", num_classes=10, input_shape=toy_splits.train.input_shape)
    assert candidate_layers(net) == ["extracter.2", "extracter.5", "extracter.8", "extracter.11", "bottleneck"]
    with pytest.raises(ConfigError, match="no module named"):
        discover_pseudo_bias(net, train=toy_splits.train, layer="nope")


def test_recording_dynamics_changes_nothing_and_is_opt_in(tmp_path, toy_splits):
    plain = train_run(
        dataset="biased-toy",
        out=tmp_path / "plain",
        splits=toy_splits,
        model="mlp",
        config=TrainConfig(epochs=2, seed=1),
        progress=False,
    )[1].model
    out, res = train_run(
        dataset="biased-toy",
        out=tmp_path / "rec",
        splits=toy_splits,
        model="mlp",
        config=TrainConfig(epochs=2, seed=1),
        progress=False,
        record_dynamics=True,
    )
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), res.model.state_dict().values()))
    assert not (tmp_path / "plain" / DYNAMICS_FILE).exists() and json.loads((out / "run.json").read_text())["dynamics"]
    assert not res.model._forward_hooks and not res.model.fc._forward_pre_hooks  # hooks removed
    d = load_dynamics(out)
    n = len(toy_splits.train)
    assert d["loss"].shape == d["correct"].shape == d["attractor"].shape == (2, n)
    assert set(d["correct"].unique().tolist()) <= {0, 1} and (d["loss"] >= 0).all()
    assert (d["attractor"][1] >= 0).all()  # centroids exist from the first batches on
    assert int(d["attractor"].max()) < toy_splits.num_classes


def test_dynamics_never_read_bias_labels(toy_splits):
    def record(data):
        torch.manual_seed(0)
        net = build_model("mlp", num_classes=10, input_shape=toy_splits.train.input_shape)
        rec = DynamicsRecorder(TrainingMethod())
        fit(net, data, method=rec, config=TrainConfig(epochs=1, seed=0), head="fc", progress=False)
        rec.close()
        return rec.dynamics()

    a, b = record(toy_splits.train), record(toy_splits.train.without_bias_labels())
    assert all(torch.equal(a[k].float().nan_to_num(-1), b[k].float().nan_to_num(-1)) for k in a)


def test_discover_from_dynamics_rule():
    # 4 epochs, 6 samples of class 0: three pulled away rarely (once / never), two repeatedly, one never visited
    att = torch.tensor([[3, 0, 0, 4, 4, -1], [0, 5, 0, 4, 4, -1], [0, 0, 0, 4, 2, -1], [0, 0, 0, 0, 4, -1]])
    found = discover_from_dynamics({"attractor": att}, torch.zeros(6, dtype=torch.long), num_classes=10)
    assert found.conflicting.tolist() == [False, False, False, True, True, False]
    assert found.pseudo_bias.tolist() == [0, 0, 0, 4, 4, 0]  # the most frequent foreign attractor
    assert found.conflict_score[3] == pytest.approx((3 - 2 + 0.5) / 4)  # Otsu splits {0, 1} from {3, 4}: t = 2
    with pytest.raises(DataError):
        discover_from_dynamics({"attractor": att}, torch.zeros(5, dtype=torch.long), num_classes=10)


def test_discover_cli_uses_dynamics(memorised_run, tmp_path):
    res = runner.invoke(app, ["discover", str(memorised_run)])
    assert res.exit_code == 0, res.output
    tensors = load_file(str(memorised_run / "discover" / "pseudo_bias.safetensors"))
    n = len(load_run(memorised_run).splits().train)
    assert tensors["train.dynamics.pseudo_bias"].shape == (n,) and "train.pseudo_bias" in tensors
    report = json.loads((memorised_run / "discover" / "report.json").read_text())
    assert report["sources"]["train.dynamics"] == "dynamics" and report["layer"]["chosen"] != "bottleneck"
    assert sum(r["chosen"] for r in report["layer"]["scan"]) == 1
    assert "Layer scan" in (memorised_run / "discover" / "report.md").read_text()

    res = runner.invoke(app, ["discover", str(memorised_run), "--force", "--dynamics", "use", "--layer", "bottleneck"])
    assert res.exit_code == 0, res.output
    report = json.loads((memorised_run / "discover" / "report.json").read_text())
    assert report["sources"]["train"] == "dynamics" and report["sources"]["train.geometry"] == "bottleneck"
    assert report["sources"]["unbiased_val"] == "bottleneck"

    no_dyn = tmp_path / "nodyn"
    no_dyn.mkdir()
    for f in ("run.json", "model.safetensors"):
        (no_dyn / f).write_bytes((memorised_run / f).read_bytes())
    res = runner.invoke(app, ["discover", str(no_dyn), "--dynamics", "use"])
    assert res.exit_code != 0 and isinstance(res.exception, DataError)
    res = runner.invoke(app, ["discover", str(no_dyn), "--dynamics", "sometimes"])
    assert isinstance(res.exception, DataError)


@pytest.mark.parametrize("requested, hint", [("auto", "try --record-dynamics"), ("bottleneck", "try --layer auto or")])
def test_cli_hint_when_nothing_is_flagged_does_not_suggest_what_ran(monkeypatch, tmp_path, requested, hint):
    import debiaskit.discover as discover

    report = {
        "layer": {
            "requested": requested,
            "chosen": "bottleneck",
            "selection": "test",
            "scan": [{"layer": "bottleneck", "flagged": 0, "chosen": True}],
        },
        "training_dynamics": "not recorded",
        "quality": {},
    }
    monkeypatch.setattr(discover, "discover_run", lambda *a, **k: (tmp_path, report))
    result = runner.invoke(app, ["discover", str(tmp_path), "--layer", requested], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the shared console may wrap lines
    assert hint in output and "try --layer auto" not in output.replace(hint, "")
