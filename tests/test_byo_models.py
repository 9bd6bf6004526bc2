"""User models by import path (package.module:factory) in run folders, through every CLI command and in Python."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from debiaskit.data import save_tensor_file, user_splits
from debiaskit.errors import ConfigError, DataError, ModelError
from debiaskit.ffw import find_fantastic_weights, load_pruned_model, save_result
from debiaskit.models import SourceChangedWarning, build_model, infer_head
from debiaskit.runs import load_run
from debiaskit.train import TrainConfig, train_run

HERE = Path(__file__).parent
_names = itertools.count()
FFW_FAST = ["--max-levels", "1", "--max-epochs-per-level", "1", "--no-progress"]
# FFW's mechanics on 1-epoch / untrained models, near chance themselves: the do-no-harm guard (test_ffw_no_harm.py)
# would refuse their output; recorded here, not enforced
pytestmark = pytest.mark.usefixtures("allow_harm")


@pytest.fixture()
def cli(monkeypatch, capsys):
    """Run the console script in-process: (exit code, stdout, stderr on one line)."""
    from debiaskit.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["debiaskit", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "1000")
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        return exc.value.code or 0, out, " ".join(err.split())

    return run


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """tests/user_models.py copied to a fresh folder under a fresh module name; that folder is the cwd."""
    name = f"mynets_{next(_names)}"
    folder = tmp_path / "code"
    folder.mkdir()
    shutil.copy(HERE / "user_models.py", folder / f"{name}.py")
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    yield name, folder / f"{name}.py"
    sys.modules.pop(name, None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(folder), "")])


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, toy_splits):
    """Float (x, y, b) images with a split array, as a user would save them."""
    parts, codes = [], []
    for code, name in enumerate(["train", "unbiased_train", "unbiased_val", "unbiased_test", "test"]):
        split = getattr(toy_splits, name)
        keep = torch.arange(min(len(split), 600 if name == "train" else 200))
        parts.append((split.x[keep], split.y[keep], split.b[keep]))
        codes.append(torch.full((len(keep),), code))
    x, y, b = (torch.cat([p[i] for p in parts]) for i in range(3))
    path = tmp_path_factory.mktemp("data") / "images.safetensors"
    return save_tensor_file(path, x=x, y=y, b=b, split=torch.cat(codes), bias_names=("colour",))


@pytest.fixture(scope="module")
def tabular_file(tmp_path_factory):
    g = np.random.default_rng(0)
    n = 2400
    y = g.integers(0, 2, n)
    b = np.where(g.random(n) < 0.9, y, 1 - y)
    onehot = np.eye(2)[b]  # the protected attribute is an input (as in UCI Adult)
    x = np.concatenate([g.normal(size=(n, 4)) + y[:, None], onehot], 1).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "rows.npz"
    np.savez(path, x=x, y=y, b=b, bias_names=np.array(["sex"]), bias_columns=np.array([4, 5]))
    return path


def test_the_issue_model_through_every_cli_command(cli, user_module, image_file, tmp_path):
    module, source = user_module
    run = tmp_path / "run"
    code, out, err = cli(
        "train",
        "--dataset",
        f"tensors:{image_file}",
        "--model",
        f"{module}:residual_cnn",
        "--model-arg",
        "width=4",
        "--epochs",
        "1",
        "--out",
        run,
        "--no-progress",
    )
    assert code == 0, err
    meta = json.loads((run / "run.json").read_text())
    m = meta["model"]
    assert (m["source"], m["name"], m["head"]) == ("import", f"{module}:residual_cnn", "classifier")
    assert m["args"] == {"width": 4, "num_classes": 10, "in_channels": 3} and set(m["filled_args"]) == {
        "num_classes",
        "in_channels",
    }
    assert m["sha256"] and m["source_file"] == str(source.resolve())
    assert meta["data"]["dataset"] == f"tensors:{image_file.resolve()}" and meta["data"]["sha256"]
    assert cli("audit", run)[0] == 0
    code, out, err = cli("ffw", run, "--mode", "structured", *FFW_FAST)
    assert code == 0, err
    pruned = load_pruned_model(run / "ffw-structured-g10")
    assert sum(p.numel() for p in pruned.parameters()) <= sum(p.numel() for p in load_run(run).model.parameters())
    code, out, err = cli("discover", run)
    assert code == 0, err
    code, out, err = cli("ffw", run, "--mode", "unstructured", "--bias-labels", "discovered", *FFW_FAST)
    assert code == 0, err
    code, out, err = cli("unlearn", run)  # FMD needs counterfactual pairs, which plain tensors lack
    assert code == 2 and "counterfactual" in err


def test_a_tabular_model_and_a_nested_head_from_the_cli(cli, user_module, tabular_file, image_file, tmp_path):
    module, _ = user_module
    run = tmp_path / "tab"
    code, _, err = cli(
        "train",
        "--dataset",
        f"tensors:{tabular_file}",
        "--model",
        f"{module}:tabular_mlp",
        "--model-arg",
        "n_features=6",
        "--model-arg",
        "n_classes=2",
        "--epochs",
        "2",
        "--out",
        run,
        "--no-progress",
    )
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["model"]["head"] == "out"
    assert cli("audit", run)[0] == 0
    assert json.loads((run / "audit" / "audit.json").read_text())["attributes"][0]["counterfactual_bias"] is not None
    assert cli("ffw", run, "--mode", "structured", *FFW_FAST)[0] == 0
    code, _, err = cli("unlearn", run, "--pool-size", "500", "--top-k", "50")  # FMD: counterfactual = flipped columns
    assert code == 0, err
    assert load_run(tmp_path / "tab-fmd").record.method.name == "fmd"
    seq = tmp_path / "seq"
    code, _, err = cli(
        "train",
        "--dataset",
        f"tensors:{image_file}",
        "--model",
        f"{module}:sequential_cnn",
        "--model-arg",
        "in_channels=3",
        "--head",
        "head.fc",
        "--epochs",
        "1",
        "--out",
        seq,
        "--no-progress",
    )
    assert code == 0, err
    assert cli("ffw", seq, "--mode", "structured", *FFW_FAST)[0] == 0
    assert cli("discover", seq)[0] == 0


@pytest.fixture(scope="module")
def two_attribute_rows(tmp_path_factory):
    """Tabular rows, 3 classes, TWO bias attributes (region: 3 values, an input one-hot; sex: 2 values)."""
    g = np.random.default_rng(1)
    split = np.repeat([0, 5, 4], [1500, 600, 300])  # D^b, D^u (divided 60/20/20 by debiaskit), test
    n = len(split)
    y = g.integers(0, 3, n)
    biased = split == 0
    region = np.where(biased & (g.random(n) < 0.9), y, g.integers(0, 3, n))
    sex = np.where(biased & (g.random(n) < 0.8), y % 2, g.integers(0, 2, n))
    x = np.concatenate([g.normal(size=(n, 5)) + 0.7 * y[:, None], 2.0 * np.eye(3)[region], 1.5 * sex[:, None]], 1)
    path = tmp_path_factory.mktemp("data") / "two_attributes.npz"
    np.savez(
        path,
        x=x.astype(np.float32),
        y=y,
        b=np.stack([region, sex], 1),
        split=split,
        bias_names=np.array(["region", "sex"]),
    )
    return path


def test_tabular_rows_with_two_bias_attributes_and_a_layernorm_mlp(cli, user_module, two_attribute_rows, tmp_path):
    """A model and data beyond the issue's: every command runs, the attributes keep their names, and structured
    FFW says why it cannot remove a unit (LayerNorm normalises over all of them) before any search."""
    module, _ = user_module
    run = tmp_path / "rows"
    code, _, err = cli(
        "train",
        "--dataset",
        f"tensors:{two_attribute_rows}",
        "--model",
        f"{module}:residual_mlp",
        "--epochs",
        "2",
        "--out",
        run,
        "--no-progress",
    )
    assert code == 0, err
    meta = json.loads((run / "run.json").read_text())["model"]
    assert meta["head"] == "fc_out" and meta["args"] == {"in_features": 9, "num_classes": 3}
    code, out, err = cli("audit", run)
    assert code == 0, err
    assert "bias extractability [region]" in out and "bias extractability [sex]" in out  # not eaten as markup
    audit = json.loads((run / "audit" / "audit.json").read_text())
    assert [a["name"] for a in audit["attributes"]] == ["region", "sex"]
    # each attribute its own count: region's table has 3 columns, sex's 2 (not 3 with an empty one)
    assert [len(a["groups"]["group_counts"][0]) for a in audit["attributes"]] == [3, 2]
    assert [a["num_bias_classes"] for a in audit["attributes"]] == [3, 2]
    code, _, err = cli("ffw", run, "--mode", "structured", *FFW_FAST)
    assert code == 2 and "LayerNorm" in err and "mode='unstructured'" in err
    assert not (run / "ffw-structured-g10").exists()
    code, _, err = cli("ffw", run, "--mode", "unstructured", *FFW_FAST)
    assert code == 0, err
    assert json.loads((run / "ffw-unstructured-g10" / "ffw.json").read_text())["status"] == "finished"
    code, out, err = cli("discover", run, "--layer", "auto")
    assert code == 0, err
    assert json.loads((run / "discover" / "report.json").read_text())["layer"]["requested"] == "auto"
    code, _, err = cli(
        "train",
        "--dataset",
        f"tensors:{two_attribute_rows}",
        "--model",
        f"{module}:residual_mlp",
        "--method",
        "calm",
        "--epochs",
        "2",
        "--out",
        tmp_path / "calm",
        "--no-progress",
    )
    assert code == 0, err
    assert cli("audit", tmp_path / "calm")[0] == 0


def _image_folder(root: Path, n: int = 160) -> Path:
    """A Waterbirds-style folder with its own column names: the bias is the background grey level."""
    from PIL import Image

    g = np.random.default_rng(0)
    (root / "pics").mkdir(parents=True)
    rows = ["image,label,place,fold"]
    for i in range(n):
        fold = "train" if i < 100 else ("unbiased" if i < 130 else "test")
        label = int(g.integers(0, 2))
        place = label if fold == "train" and g.random() < 0.9 else int(g.integers(0, 2))
        pixels = np.full((12, 12, 3), 60 + 120 * place, np.uint8)
        pixels[3:9, 3:9, label] = 250
        Image.fromarray(pixels).save(root / "pics" / f"{i}.png")
        rows.append(f"pics/{i}.png,{label},{place},{fold}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_an_image_folder_and_another_user_cnn_from_the_cli(cli, user_module, tmp_path):
    module, _ = user_module
    root = _image_folder(tmp_path / "folder")
    data = [
        "--dataset",
        f"folder:{root}",
        "--param",
        "target_column=label",
        "--param",
        "bias_column=place",
        "--param",
        "split_column=fold",
        "--param",
        "workers=0",
    ]
    run = tmp_path / "run"
    code, _, err = cli("train", *data, "--model", f"{module}:small_vgg", "--epochs", "2", "--out", run, "--no-progress")
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["data"]["dataset"] == f"folder:{root.resolve()}"
    code, out, err = cli("audit", run)
    assert code == 0, err
    assert "bias extractability [place]" in out
    code, _, err = cli("ffw", run, "--mode", "structured", *FFW_FAST)
    assert code == 0, err
    pruned = load_pruned_model(run / "ffw-structured-g10")
    assert sum(p.numel() for p in pruned.parameters()) <= sum(p.numel() for p in load_run(run).model.parameters())
    code, _, err = cli("discover", run, "--layer", "auto")
    assert code == 0, err
    code, _, err = cli(
        "train",
        *data,
        "--model",
        f"{module}:small_vgg",
        "--method",
        "calm",
        "--epochs",
        "2",
        "--out",
        tmp_path / "calm",
        "--no-progress",
    )
    assert code == 0, err
    grouped = tmp_path / "grouped"
    code, _, err = cli(
        "train",
        *data,
        "--model",
        f"{module}:small_vgg",
        "--model-arg",
        "norm='group'",
        "--epochs",
        "1",
        "--out",
        grouped,
        "--no-progress",
    )
    assert code == 0, err
    code, _, err = cli("ffw", grouped, "--mode", "structured", *FFW_FAST)  # GroupNorm mixes channels: named, exit 2
    assert code == 2 and "GroupNorm" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no_such_module_xyz:net"], "cannot import module no_such_module_xyz"),
        (["--model", "{module}:nothing_here"], "has no 'nothing_here'"),
        (["--model", "{module}:residual_cnn", "--model-arg", "depth=3"], "takes no argument(s) depth"),
        (["--model", "{module}:tabular_mlp"], "needs argument(s) n_features"),
        (["--model", "{module}:broken_factory"], "RuntimeError: this factory always fails"),
        (["--model", "{module}:residual_cnn", "--head", "fc"], "no module named 'fc'"),
        (["--model", "resnet7"], "unknown model 'resnet7'"),
    ],
)
def test_model_errors_before_any_training(cli, user_module, image_file, tmp_path, args, message):
    module, _ = user_module
    code, _, err = cli(
        "train",
        "--dataset",
        f"tensors:{image_file}",
        *[a.format(module=module) for a in args],
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
        "--no-progress",
    )
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()


def test_ambiguous_head_is_named():
    with pytest.raises(ModelError, match="name the classifier head"):
        infer_head(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)), num_classes=2)


def _train_user_run(module, image_file, out):
    return train_run(
        dataset=f"tensors:{image_file}",
        model=f"{module}:residual_cnn",
        model_args={"width": 4},
        out=out,
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
    )[0]


def test_load_run_imports_from_the_recorded_folder_when_not_importable(user_module, image_file, tmp_path, monkeypatch):
    module, source = user_module
    run = _train_user_run(module, image_file, tmp_path / "run")
    reference = load_run(run).model
    sys.modules.pop(module, None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(source.parent), "")])
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="where it was at training time"):
        again = load_run(run).model
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(again(x), reference(x))
    sys.modules.pop(module, None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(source.parent)])
    source.rename(tmp_path / "elsewhere.py")
    with pytest.raises(ModelError, match="which is gone.*PYTHONPATH"):
        load_run(run)


def test_changed_source_warns_when_the_weights_fit_and_refuses_otherwise(user_module, image_file, tmp_path):
    module, source = user_module
    run = _train_user_run(module, image_file, tmp_path / "run")
    original = source.read_text()
    source.write_text(original + "\n# a comment added after training\n")
    sys.modules.pop(module, None)
    with pytest.warns(SourceChangedWarning, match="weights still fit"):
        load_run(run)
    with pytest.raises(ModelError, match="refusing to rebuild"):
        load_run(run, source_changed="refuse")
    source.write_text(
        original.replace("self.classifier = nn.Linear(4 * width", "self.classifier = nn.Linear(2 * width").replace(
            "self.block3 = ResBlock(2 * width, 4 * width", "self.block3 = ResBlock(2 * width, 2 * width"
        )
    )
    sys.modules.pop(module, None)
    with pytest.raises(ModelError, match="no longer fit"):
        load_run(run)


def test_python_api_with_a_factory_user_splits_and_an_instance(user_module, image_file, tmp_path):
    module, _ = user_module
    mod = __import__(module)
    from debiaskit.data import make_splits

    file_splits = make_splits(f"tensors:{image_file}")
    splits = user_splits(**{n: TensorDataset(d.x, d.y, d.b) for n, d in file_splits.items()})
    run, _ = train_run(
        dataset=splits,
        model=mod.residual_cnn,
        model_args={"width": 4},
        out=tmp_path / "f",
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
    )
    loaded = load_run(run)
    assert loaded.meta["model"]["name"] == f"{module}:residual_cnn" and loaded.head == "classifier"
    with pytest.raises(DataError, match="given as Python objects"):
        loaded.splits()
    instance = mod.ResidualCNN(width=4)
    run2, _ = train_run(
        dataset=splits, model=instance, out=tmp_path / "i", config=TrainConfig(epochs=1, seed=0), progress=False
    )
    with pytest.raises(ModelError, match="pass model="):
        load_run(run2)  # rebuilt as ResidualCNN(): width 16, not 4
    assert torch.equal(
        load_run(run2, model=mod.ResidualCNN(width=4)).model.classifier.weight, instance.classifier.weight
    )


@pytest.mark.parametrize("mode", ["unstructured", "structured"])
def test_ffw_result_of_a_user_model_saves_and_reloads(user_module, image_file, tmp_path, mode):
    module, _ = user_module
    from debiaskit.data import make_splits

    splits = make_splits(f"tensors:{image_file}")
    model = build_model(f"{module}:residual_cnn", num_classes=10, input_shape=(3, 28, 28), args={"width": 4}).eval()
    result = find_fantastic_weights(
        model,
        head="classifier",
        train=splits.unbiased_train,
        val=splits.unbiased_val,
        mode=mode,
        max_levels=1,
        max_epochs_per_level=1,
        head_pretrain_epochs=1,
        progress=False,
    )
    folder = save_result(result, tmp_path / "ffw")
    with pytest.raises(Exception, match="--force"):
        save_result(result, tmp_path / "ffw")
    again = load_pruned_model(folder)
    x = splits.test.x[:4]
    assert torch.allclose(again(x), result.model(x), atol=1e-6)
    mine = __import__(module).ResidualCNN(width=4)  # a model built without debiaskit: name its factory on saving
    result2 = find_fantastic_weights(
        mine.eval(),
        head="classifier",
        train=splits.unbiased_train,
        val=splits.unbiased_val,
        mode=mode,
        max_levels=1,
        max_epochs_per_level=1,
        head_pretrain_epochs=1,
        progress=False,
    )
    save_result(result2, tmp_path / "ffw2", model=__import__(module).residual_cnn, model_args={"width": 4})
    assert torch.allclose(load_pruned_model(tmp_path / "ffw2")(x), result2.model(x), atol=1e-6)


def test_python_ffw_prints_progress(capsys, image_file):
    from debiaskit.data import make_splits

    splits = make_splits(f"tensors:{image_file}")
    model = build_model("mlp", num_classes=10, input_shape=(3, 28, 28)).eval()
    find_fantastic_weights(
        model,
        train=splits.unbiased_train,
        val=splits.unbiased_val,
        max_levels=1,
        max_epochs_per_level=1,
        head_pretrain_epochs=1,
    )
    assert "hard-masked task" in capsys.readouterr().out
    find_fantastic_weights(
        model,
        train=splits.unbiased_train,
        val=splits.unbiased_val,
        max_levels=1,
        max_epochs_per_level=1,
        head_pretrain_epochs=1,
        progress=False,
    )
    assert capsys.readouterr().out == ""


def test_model_args_parse_as_python_literals():
    from debiaskit.models import parse_model_args

    assert parse_model_args(["width=32", "dropout=0.1", "norm=batch", "flag=true", "dims=[1, 2]"]) == {
        "width": 32,
        "dropout": 0.1,
        "norm": "batch",
        "flag": True,
        "dims": [1, 2],
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_model_args(["width"])


def test_the_comparison_harness_on_a_user_model_and_file(user_module, image_file, tmp_path):
    from debiaskit.bench import run_compare
    from debiaskit.bench._compare import Suite, compare_table

    module, _ = user_module
    suite = Suite(
        name="mine",
        dataset=f"tensors:{image_file}",
        param=None,
        values=(0.0,),
        model=f"{module}:residual_cnn",
        model_args={"width": 4},
        head="classifier",
        epochs=1,
        unbiased_size=600,
    )
    cells = run_compare(
        suite=suite,
        root=tmp_path / "compare",
        seeds=(0,),
        methods=["vanilla", "calm", "ffw"],
        keep_going=False,
        echo=lambda msg: None,
    )
    assert [c["method"] for c in cells] == ["vanilla", "calm", "ffw"]
    assert all(0 <= c["task_accuracy"] <= 1 and c["bias_extractability"] is not None for c in cells)
    vanilla = load_run(next((tmp_path / "compare").rglob("vanilla/seed0")))  # the cell is an ordinary run folder
    assert vanilla.record.model.source == "import" and vanilla.record.model.args["width"] == 4
    assert "| calm |" in compare_table(cells, suite=suite, command="test", wall_time_s=1.0)


def test_run_level_functions_take_the_splits_of_python_data(user_module, image_file, tmp_path):
    from debiaskit.audit import audit_run
    from debiaskit.data import make_splits
    from debiaskit.discover import discover_run

    module, _ = user_module
    file_splits = make_splits(f"tensors:{image_file}")
    splits = user_splits(**{n: TensorDataset(d.x, d.y, d.b) for n, d in file_splits.items()})
    run, _ = train_run(
        dataset=splits,
        model=f"{module}:residual_cnn",
        model_args={"width": 4},
        out=tmp_path / "r",
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
    )
    with pytest.raises(DataError, match="given as Python objects"):
        audit_run(run)
    report, _ = audit_run(run, splits=splits)
    assert report.num_samples == len(splits.test)
    _, found = discover_run(run, splits=splits, layer="bottleneck")
    assert found["layer"]["chosen"] == "bottleneck"
