"""Where the bias is read: one linear probe per block / stage and at the bottleneck, probes within each target class,
and the sentences of the audit's and FFW's reports derived from those tables."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from debiaskit.audit import audit_model, to_markdown
from debiaskit.audit._where import probe_points, where_sentences
from debiaskit.ffw._run import probe_verdict, where_lines, where_verdict
from debiaskit.models import build_model


def _tensors(x, y, b) -> TensorDataset:
    return TensorDataset(x.float(), y.int(), b.long())


def _planted(n: int, seed: int, *, classes: int = 4, flip: bool = False) -> TensorDataset:
    """Features [one-hot target x 3 | bias code | noise]: the bias code is one-hot b (4 values), or, with ``flip``,
    a single feature +-1 whose sign is b's and flips between even and odd target classes (b binary)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    if flip:
        b = torch.randint(0, 2, (n,), generator=gen)
        code = ((2 * b - 1) * (1 - 2 * (y % 2))).float()[:, None]
    else:
        b = torch.randint(0, 4, (n,), generator=gen)
        code = nn.functional.one_hot(b, 4).float()
    noise = 0.3 * torch.randn(n, 4, generator=gen)
    return _tensors(torch.cat([3 * nn.functional.one_hot(y, classes).float(), code, noise], 1), y, b)


class DropsTheBias(nn.Module):
    """Block 1 copies its input (bias included); block 2 keeps the target features and zeroes every other one, so
    the bias is readable upstream and gone at the bottleneck."""

    def __init__(self, d: int, keep: int, classes: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(d, d), nn.ReLU())
        self.block2 = nn.Sequential(nn.Linear(d, d))
        self.fc = nn.Linear(d, classes)
        with torch.no_grad():
            self.block1[0].weight.copy_(torch.eye(d))
            self.block1[0].bias.fill_(1.0)  # every feature stays positive: the ReLU keeps them
            mask = torch.zeros(d)
            mask[:keep] = 1
            self.block2[0].weight.copy_(torch.diag(mask))
            self.block2[0].bias.zero_()

    def forward(self, x):
        return self.fc(self.block2(self.block1(x)))


def _audit(model, head: str, make) -> object:
    return audit_model(
        model,
        head=head,
        test=make(600, 2),
        unbiased_train=make(800, 0),
        unbiased_val=make(400, 1),
        probe_kwargs={"max_epochs": 3},
    )


def test_the_bias_readable_upstream_but_erased_at_the_bottleneck_is_reported_so():
    report = _audit(DropsTheBias(12, keep=4, classes=4), "fc", _planted)
    where = report.headline()["where"]
    by = {p["point"]: p for p in where["points"]}
    assert list(by) == ["block1.1", "block2.0", "bottleneck"]  # run order, bottleneck last
    assert by["block1.1"]["readable"] and by["block1.1"]["accuracy"] > 0.9
    assert not by["bottleneck"]["readable"] and by["bottleneck"]["accuracy"] < 0.4  # 4 bias values: chance ~25 %
    text = " ".join(where_sentences(where))
    assert "Readable upstream" in text and "`block1.1` reads" in text
    assert "read most at `block1.1`" in text
    md = to_markdown(report)
    assert (
        "## Where the bias is read: bias (probe accuracy" in md
        and "| `block1.1` | 12 |" in md
        and "Readable upstream" in md
    )


def test_the_per_class_probe_catches_a_bias_whose_sign_flips_between_classes():
    model = DropsTheBias(9, keep=9, classes=4)  # keeps everything: the bottleneck holds the flipped code
    report = _audit(model, "fc", lambda n, s: _planted(n, s, flip=True))
    att = report.attributes[0]
    neck = att.points[-1]
    assert neck.point == "bottleneck" and not neck.readable  # one probe over all classes: about 50 %
    assert att.per_class is not None and att.per_class.mean_accuracy > 0.9 and att.per_class.readable
    assert [c.target for c in att.per_class.classes] == [0, 1, 2, 3]
    text = " ".join(where_sentences(report.headline()["where"]))
    assert "Readable within classes" in text and "Readable upstream" not in text


def test_per_class_chance_is_the_majority_bias_value_within_the_class():
    def lopsided(n, seed):
        d = _planted(n, seed)
        x, y, b = d.tensors
        b = torch.where((y == 0) & (torch.arange(n) % 4 != 0), torch.zeros_like(b), b)  # class 0: mostly b = 0
        return _tensors(x, y, b)

    report = _audit(DropsTheBias(12, keep=4, classes=4), "fc", lopsided)
    pc = report.attributes[0].per_class
    c0 = next(c for c in pc.classes if c.target == 0)
    test = lopsided(600, 2)
    y, b = test.tensors[1], test.tensors[2]
    share = float(torch.bincount(b[y == 0]).max()) / int((y == 0).sum())
    assert c0.chance == pytest.approx(share) and c0.chance > 0.7
    assert pc.mean_chance == pytest.approx(sum(c.chance for c in pc.classes) / len(pc.classes))  # classes equal


def test_points_of_the_zoo_and_of_user_models():
    assert probe_points(build_model("simple-conv-small", num_classes=10, input_shape=(3, 28, 28)), "fc") == [
        "extracter.2",
        "extracter.5",
        "extracter.8",
        "extracter.11",
    ]
    assert probe_points(build_model("mlp", num_classes=10, input_shape=(3, 28, 28)), "fc") == [
        "feature.2",
        "feature.4",
        "feature.6",
    ]
    assert probe_points(build_model("resnet18", num_classes=10, input_shape=(3, 28, 28)), "fc") == [
        "stem.2",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    vgg = nn.Sequential()
    vgg.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()))
    vgg.add_module("pool", nn.AdaptiveAvgPool2d(1))
    vgg.add_module("flat", nn.Flatten())
    vgg.add_module("classifier", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Softmax(1)))
    assert probe_points(vgg, "classifier.2") == ["features.1", "features.3", "classifier.1"]

    class Wrapper(nn.Module):  # a backbone and a head: the backbone's own stages are read
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)  # registered first, runs last
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1))

        def forward(self, x):
            return self.head(self.backbone(x).flatten(1))

    assert probe_points(Wrapper(), "head") == ["backbone.1", "backbone.3"]


class Untraceable(nn.Module):
    """Control flow on a tensor's value (torch.fx cannot trace it), a head registered before the blocks and an
    auxiliary branch that runs after the head: hooks still read the blocks, in the order they run, before the head."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.late = nn.Linear(4, 4)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.proj = nn.Conv2d(8, 16, 1)

    def forward(self, x):
        h = self.conv(x)
        if h.sum() > -1e9:  # data-dependent
            h = self.proj(h)
        out = self.fc(h.mean((2, 3)))
        return out + 0 * self.late(out)


def test_a_model_fx_cannot_trace_is_read_with_hooks_in_run_order():
    def images(n, seed):
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n,), generator=gen)
        b = torch.randint(0, 2, (n,), generator=gen)
        x = torch.randn(n, 3, 6, 6, generator=gen) * 0.1
        x[:, 0] += b[:, None, None].float()  # the bias is a colour: the pooled maps keep it
        x[:, 1] += y[:, None, None].float()
        return _tensors(x, y, b)

    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(Untraceable())
    model = Untraceable()
    start = time.perf_counter()
    report = _audit(model, "fc", images)
    points = report.attributes[0].points
    assert [p.point for p in points] == ["conv.1", "proj", "bottleneck"]  # "late" runs after the head: not read
    assert points[0].pooled and points[0].dims == 8 and points[0].readable
    assert time.perf_counter() - start < 5


def test_the_last_block_pooled_equals_the_bottleneck_of_a_conv_net(toy_splits):
    """The pooled output of SimpleConvNet's last block is its bottleneck: both read the same (the features are taken
    from the collection's own forward passes, not from the layout check's)."""
    model = build_model("simple-conv-small", num_classes=10, input_shape=tuple(toy_splits.test.x.shape[1:]))
    start = time.perf_counter()
    report = audit_model(
        model,
        head="fc",
        test=toy_splits.test,
        unbiased_train=toy_splits.unbiased_train,
        unbiased_val=toy_splits.unbiased_val,
        counterfactual=False,
        probe_kwargs={"max_epochs": 2},
    )
    seconds = time.perf_counter() - start
    pts = {p.point: p for p in report.attributes[0].points}
    assert list(pts) == ["extracter.2", "extracter.5", "extracter.8", "extracter.11", "bottleneck"]
    assert pts["extracter.11"].accuracy == pytest.approx(pts["bottleneck"].accuracy, abs=0.004)
    assert pts["extracter.2"].pooled and not pts["bottleneck"].pooled
    assert seconds < 20


def test_a_wide_point_is_projected_to_the_cap():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.wide = nn.Linear(12, 2100)
            self.fc = nn.Linear(2100, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.wide(x)))

    report = _audit(Wide(), "fc", _planted)
    wide = report.attributes[0].points[0]
    assert wide.point == "wide" and wide.dims == 2048 and wide.projected_from == 2100 and wide.readable


def test_where_can_be_turned_off():
    report = audit_model(
        DropsTheBias(12, keep=4, classes=4),
        head="fc",
        test=_planted(200, 2),
        unbiased_train=_planted(300, 0),
        unbiased_val=_planted(200, 1),
        probe_kwargs={"max_epochs": 1},
        where=False,
    )
    assert report.attributes[0].points is None and "where" not in report.headline()
    assert "Where the bias" not in to_markdown(report)


def _point(name, acc, *, chance=0.1, dims=16):
    kind = "bottleneck" if name == "bottleneck" else "block"
    return {
        "point": name,
        "dims": dims,
        "accuracy": acc,
        "chance": chance,
        "readable": acc > chance + 0.1,
        "kind": kind,
    }


def _where(*points, per_class=None):
    return {"points": list(points), "per_class": per_class, "probe": "ridge"}


def test_ffw_sentences_follow_the_numbers():
    before = _where(_point("block1", 0.99), _point("block2", 0.60), _point("bottleneck", 0.55))
    after = _where(_point("block1", 0.998), _point("block2", 0.45), _point("bottleneck", 0.12))
    text = where_verdict(before, after, eraser=True)
    assert "read most at `block1`: 99.8 %" in text and "before FFW 99.0 %" in text
    assert "Readable upstream" in text and "`block2` reads 45.0 %" in text and "eraser acts on the bottleneck" in text
    assert "Read more after FFW than before: `block1` 99.0 -> 99.8 %" in text
    assert "harder to read" not in text and "no longer" not in text
    # nothing readable anywhere: said as a reading of this probe, never as "the bias is gone"
    low = _where(_point("block1", 0.15), _point("bottleneck", 0.11))
    text = where_verdict(before, low)
    assert "within 10 points of chance at every point" in text and "Readable upstream" not in text
    assert "no longer" not in text and "removed" not in text and "Read more" not in text
    # the bottleneck still reads it: no "readable upstream"
    assert "Readable upstream" not in where_verdict(before, before)


def test_ffw_report_table_has_every_point_before_and_after():
    pc_b = {
        "mean_accuracy": 0.6,
        "mean_chance": 0.5,
        "worst_class": 1,
        "worst_accuracy": 0.7,
        "worst_chance": 0.5,
        "readable": True,
        "classes": [{"target": 1, "accuracy": 0.7, "chance": 0.5, "samples": 10}],
    }
    pc_a = {**pc_b, "mean_accuracy": 0.645, "worst_accuracy": 0.64, "classes": []}
    info = {
        "before": {"where": _where(_point("blockA", 0.9), _point("bottleneck", 0.5), per_class=pc_b)},
        "after": {"where": _where(_point("blockA", 0.8), _point("bottleneck", 0.11), per_class=pc_a)},
        "search": {"eraser": None},
    }
    md = "\n".join(where_lines(info))
    assert "| `blockA` | 16 / 16 | 90.00 | 80.00 | 10.00 |" in md
    assert "| the bottleneck (the head's input) | 16 / 16 | 50.00 | 11.00 | 10.00 |" in md
    assert "| within class 1, read most after FFW (bottleneck) | - | 70.00 | 64.00 | 50.00 |" in md
    assert "64.5 % on average (before FFW 60.0 %)" in md and "Readable within classes" in md
    assert where_lines({"before": {}, "after": {}, "search": {}}) == []  # records without it: no section


def test_the_bottleneck_claim_is_withheld_when_a_class_still_reads_the_bias():
    per_class = {
        "mean_accuracy": 0.16,
        "mean_chance": 0.10,
        "worst_class": 1,
        "worst_accuracy": 0.29,
        "worst_chance": 0.10,
        "readable": True,
        "classes": [{"target": 1, "accuracy": 0.29, "chance": 0.10, "samples": 100}],
    }
    quiet = {"sgd5": 0.11, "linear": 0.12}
    where = _where(_point("extracter.2", 0.72), _point("bottleneck", 0.11), per_class=per_class)
    v = probe_verdict(quiet, num_bias=10, before={"sgd5": 0.9, "linear": 0.99}, task=(0.5, 0.9), where=where)
    assert not v["bias_unreadable"] and v["readable_within_class"] and v["readable_upstream"] == ["extracter.2"]
    assert "no longer" not in v["text"] and "within target class 1 reads it there (29.0 %" in v["text"]
    assert "Earlier blocks still read it" in v["text"] and "`extracter.2` 72.0 %" in v["text"]
    # nothing read within a class or upstream: the claim stands, naming the bottleneck
    clean = _where(_point("extracter.2", 0.12), _point("bottleneck", 0.11), per_class={**per_class, "readable": False})
    v = probe_verdict(quiet, num_bias=10, before={"sgd5": 0.9, "linear": 0.99}, task=(0.5, 0.9), where=clean)
    assert v["bias_unreadable"] and "can no longer be read at the bottleneck" in v["text"]
    assert "Earlier blocks" not in v["text"]


def test_debiaskit_audit_prints_and_writes_where_the_bias_is_read(toy_run_dir, cli, tmp_path):
    code, out = cli("audit", toy_run_dir, "--out", tmp_path / "audit")
    assert code == 0, out
    assert "Where the bias is read: " in out and "feature.2" in out and "bottleneck" in out
    record = json.loads((tmp_path / "audit" / "audit.json").read_text())
    points = record["attributes"][0]["points"]
    assert [p["point"] for p in points] == ["feature.2", "feature.4", "feature.6", "bottleneck"]
    assert record["attributes"][0]["per_class"]["worst_class"] in range(10)
    md = (tmp_path / "audit" / "report.md").read_text()
    assert "| point | dims | probe accuracy | chance |" in md and "The bias is read most at" in md


def test_a_module_named_bottleneck_is_a_block_beside_the_head_input():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.bottleneck = nn.Linear(12, 6)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.bottleneck(x)))

    report = _audit(Named(), "fc", _planted)
    rows = [(p["point"], p["kind"], p["dims"]) for p in report.headline()["where"]["points"]]
    assert rows == [("bottleneck", "block", 6), ("bottleneck", "bottleneck", 6)]
    md = to_markdown(report)
    assert "| `bottleneck` | 6 |" in md and "| the bottleneck (the head's input) | 6 |" in md


def test_a_token_sequence_is_averaged_over_its_tokens():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Linear(4, 6)  # (N, 3, 4) -> (N, 3, 6): three tokens of width 6
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(self.mix(x.view(-1, 3, 4)).mean(1))

    report = _audit(Tokens(), "fc", _planted)
    mix = report.attributes[0].points[0]
    assert (mix.point, mix.dims, mix.pooled, mix.projected_from) == ("mix", 6, True, None)
