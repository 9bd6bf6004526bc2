"""FFW search (Algorithm 1): it removes a bias planted in known units; error paths; interrupt + resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from debiaskit.audit import audit_model
from debiaskit.data import BiasDataset
from debiaskit.errors import ConfigError, DataError, ModelError
from debiaskit.ffw import find_fantastic_weights


def _planted(n: int, *, rho: float, seed: int, name: str) -> BiasDataset:
    """Two pixels: pixel 0 encodes the target y, pixel 1 the bias b (aligned with y at rate rho)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    flip = torch.rand(n, generator=g) > rho
    b = torch.where(flip, 1 - y, y)
    noise = torch.randint(-20, 21, (n, 2), generator=g)
    pix = torch.stack([60 + 135 * y, 60 + 135 * b], 1) + noise
    images = pix.clamp(0, 255).to(torch.uint8).view(n, 1, 1, 2)
    return BiasDataset(
        images=images, y=y, b=b, num_classes=2, num_bias_classes=2, name=name, aligned=(b == y), mean=0.5, std=0.25
    )  # inputs about +-1: the hidden units need no bias term


class Planted(nn.Module):
    """Hidden units 0/1 read the target pixel, units 2/3 the bias pixel - and the head trusts the bias more."""

    head_name = "fc"

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(2, 4), nn.ReLU())
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.body[1].weight.copy_(torch.tensor([[5.0, 0], [-5.0, 0], [0, 10.0], [0, -10.0]]))
            self.body[1].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[0.0, 1, 0, 1], [1, 0, 1, 0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.fixture(scope="module")
def planted():
    return {
        "train": _planted(600, rho=0.5, seed=1, name="u_train"),
        "val": _planted(300, rho=0.5, seed=2, name="u_val"),
        "test": _planted(400, rho=0.5, seed=3, name="test"),
    }


FAST = dict(
    max_levels=8, max_epochs_per_level=3, patience=1, batch_size=100, gate_lr=0.5, max_epochs=20
)  # the budget these tests were written for: 2 epochs per level


@pytest.mark.parametrize(
    "mode,adversary",
    [
        ("structured", "head"),
        ("unstructured", "head"),
        ("structured", "mmd"),
        ("unstructured", "mmd"),
        ("unstructured", "lda"),
        ("unstructured", "refit"),
    ],
)
def test_ffw_removes_a_planted_bias(planted, mode, adversary):
    model = Planted().eval()
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(
        test=planted["test"],
        unbiased_train=planted["train"],
        unbiased_val=planted["val"],
        counterfactual=False,
        probe_kwargs={"lr": 0.05},
    )  # a tiny set: a faster probe than the default
    before = audit_model(model, head="fc", **kw)
    result = find_fantastic_weights(
        model, train=planted["train"], val=planted["val"], mode=mode, gamma=10, adversary=adversary, **FAST
    )
    after = result.audit(**kw)
    assert before.attributes[0].bias_extractability > 0.95
    assert after.attributes[0].bias_extractability < 0.7
    assert after.task_accuracy > before.task_accuracy + 0.1 and after.task_accuracy > 0.9
    if mode == "structured":
        assert result.masks["body.1"].tolist() == [1, 1, 0, 0]  # exactly the planted bias units are removed
        assert result.model.get_submodule(result.head).in_features == 2  # "fc.head" behind the default eraser
    else:
        assert float(result.model.body[1].weight.detach()[2:, 1].abs().sum()) == 0.0
    # the user's model is untouched; the selected state is a hard-masked one, scored on D^u_val
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_state.items())
    assert "val_hard" in result.selected and result.history[0]["epoch"] == 0


def test_error_paths(planted):
    model = Planted()
    with pytest.raises(ModelError, match="no module named 'head'"):
        find_fantastic_weights(model, head="head", train=planted["train"], val=planted["val"])
    headless = nn.Sequential(nn.Flatten(), nn.ReLU())
    headless.fc = nn.Linear(2, 2)
    headless.forward = lambda x: headless.fc(nn.Flatten()(x))
    with pytest.raises(ModelError, match="no conv/linear layer outside its head"):
        find_fantastic_weights(headless, head="fc", train=planted["train"], val=planted["val"])
    with pytest.raises(DataError, match="bias labels"):
        find_fantastic_weights(model, train=planted["train"].without_bias_labels(), val=planted["val"])
    one = planted["train"].subset(torch.nonzero(planted["train"].b == 0).flatten())
    with pytest.raises(DataError, match="single class"):
        find_fantastic_weights(model, train=one, val=planted["val"])
    with pytest.raises(ConfigError, match="mode"):
        find_fantastic_weights(model, train=planted["train"], val=planted["val"], mode="channels")
    with pytest.raises(ConfigError, match="tau_decay"):
        find_fantastic_weights(model, train=planted["train"], val=planted["val"], tau_decay=1.5)


@pytest.mark.parametrize(
    "settings", [{"adversary": "head"}, {"adversary": "mmd", "memory": 3, "condition_on_target": True}]
)
def test_interrupt_then_resume_matches_an_uninterrupted_run(planted, tmp_path, settings):
    kw = dict(train=planted["train"], val=planted["val"], mode="unstructured", gamma=10, **settings, **FAST)
    reference = find_fantastic_weights(Planted(), **kw)

    def stop_at(step):
        def cb(event):
            if event["kind"] == "step" and event["step"] == step:
                raise KeyboardInterrupt

        return cb

    ckpt = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        find_fantastic_weights(Planted(), checkpoint_dir=ckpt, callback=stop_at(8), **kw)
    assert (ckpt / "checkpoint.safetensors").is_file()
    with pytest.raises(ConfigError, match="other settings"):
        find_fantastic_weights(Planted(), checkpoint_dir=ckpt, resume=True, **{**kw, "gamma": 5})
    resumed = find_fantastic_weights(Planted(), checkpoint_dir=ckpt, resume=True, **kw)
    assert len(resumed.history) == len(reference.history)
    assert resumed.selected["epoch"] == reference.selected["epoch"]
    for k in reference.masks:
        assert torch.equal(resumed.masks[k], reference.masks[k])
    assert resumed.history[-1]["val_hard"] == reference.history[-1]["val_hard"]


def test_pseudo_bias_labels_replace_the_true_ones(planted):
    from debiaskit.discover import with_pseudo_bias  # one implementation, shared with the audit (issue 12)

    pseudo = 1 - planted["train"].b
    data = with_pseudo_bias(planted["train"], pseudo, name="unbiased_train")
    assert torch.equal(data.b, pseudo) and data.info["pseudo_bias"]
    assert torch.equal(data.aligned, pseudo == data.y)  # pseudo-aligned: the attracting class is the sample's own
    assert torch.equal(planted["train"].b, 1 - pseudo)  # the original split is untouched
    with pytest.raises(DataError, match="integer classes"):
        with_pseudo_bias(planted["train"], pseudo[:10], name="unbiased_train")
    with pytest.raises(DataError, match="integer classes"):
        with_pseudo_bias(planted["train"], pseudo.float(), name="unbiased_train")
    with pytest.raises(DataError, match=r"classes in \[0, 1\]"):
        with_pseudo_bias(planted["train"], pseudo + 2, name="unbiased_train")


@pytest.mark.parametrize("adversary", ["head", "lda"])
def test_a_non_finite_gate_gradient_stops_the_search_before_the_gates_are_stepped(planted, monkeypatch, adversary):
    import debiaskit.ffw._adversary as adversary_module
    import debiaskit.ffw._step as step_module

    seen = []

    def nan_mi(probs, b, num_bias):
        seen.append(1)
        return probs.sum() * float("nan")

    def nan_term(self, z, b, num_bias, **kw):
        seen.append(1)
        return z.sum() * float("nan")

    monkeypatch.setattr(step_module, "mutual_information", nan_mi)
    monkeypatch.setattr(adversary_module.LinearDependence, "penalty", nan_term)
    steps = []
    with pytest.raises(ModelError, match="non-finite gate gradient at tau 1.0, step 1"):
        find_fantastic_weights(
            Planted(),
            train=planted["train"],
            val=planted["val"],
            mode="structured",
            adversary=adversary,
            callback=lambda e: steps.append(e),
            **FAST,
        )
    assert seen and not [e for e in steps if e["kind"] == "step"]  # stopped inside the first step


def test_the_tau_model_is_evaluated_only_where_it_decides_and_the_search_is_unchanged(planted, monkeypatch):
    """With a level cap of 2 epochs (a budget of 20) no plateau can end a level early, so the tau-model's
    D^u_val pass is needed only at each level's end (the agreement test): skipping it elsewhere must not change
    a single decision of the search."""
    from debiaskit.ffw._progress import epoch_line
    from debiaskit.ffw._search import _Search

    kw = dict(
        train=planted["train"],
        val=planted["val"],
        mode="unstructured",
        gamma=10,
        adversary="lda",
        erase="none",
        refit_head=False,
        **FAST,
    )
    lean = find_fantastic_weights(Planted(), progress=False, **kw)
    skipped = [r for r in lean.history if r["val_soft"] is None]
    assert skipped and all(r["val_soft"] is not None for r in lean.history if r.get("level_end"))
    assert "not evaluated" in epoch_line(skipped[0])
    monkeypatch.setattr(_Search, "_soft_decides", lambda self: True)
    full = find_fantastic_weights(Planted(), progress=False, **kw)
    assert all(r["val_soft"] is not None for r in full.history)
    assert [r["val_hard"] for r in lean.history] == [r["val_hard"] for r in full.history]
    assert [r.get("level_end") for r in lean.history] == [r.get("level_end") for r in full.history]
    assert lean.stop_reason == full.stop_reason and lean.selected["epoch"] == full.selected["epoch"]
    assert all(torch.equal(lean.masks[k], full.masks[k]) for k in full.masks)
    monkeypatch.undo()
    # a cap of 3 epochs lets a plateau end a level early: then the tau-model is evaluated every epoch
    capped = find_fantastic_weights(Planted(), progress=False, **{**kw, "max_epochs": 30})
    assert all(r["val_soft"] is not None for r in capped.history)
