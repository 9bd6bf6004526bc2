"""Fault injection, inputs: every bad parameter, device and dataset is refused at the edge (CLI and
Python), with what was wrong and what to do, exit code 2, before any compute (issue 11, cases 6-8).

"Before any compute" is checked by making the compute functions fail loudly if they are ever reached.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import tree_bytes
from debiaskit.data import get_source
from debiaskit.data._cifar import read_cifar10
from debiaskit.data._idx import md5, parse_idx, write_idx
from debiaskit.errors import ConfigError, DataError
from debiaskit.models import build_model
from debiaskit.train import TrainConfig, fit

TRAIN = ["train", "--dataset", "biased-toy", "--model", "mlp", "--epochs", "1", "--no-progress"]
MAX_SEED = "9007199254740991"


@pytest.fixture
def no_compute(monkeypatch):
    """Training, auditing, FFW, discovery and FMD raise if they start."""
    import debiaskit.audit._run as audit_run
    import debiaskit.discover._discover as discover
    import debiaskit.ffw._run as ffw_run
    import debiaskit.methods.fmd as fmd
    import debiaskit.train._run as train_run

    def boom(*a, **k):
        raise AssertionError("compute started before the inputs were checked")

    for module, name in (
        (train_run, "fit"),
        (audit_run, "audit_model"),
        (ffw_run, "audit_model"),
        (discover, "scan_layers"),
        (fmd, "fmd_unlearn"),
    ):
        monkeypatch.setattr(module, name, boom)


TRAIN_CASES = [
    (["--weight-decay", "-1"], "weight_decay is -1.0, expected a finite number >= 0"),
    (["--seed", "-1"], f"seed is -1, expected an integer in [0, {MAX_SEED}]"),
    (["--seed", str(2**53)], f"seed is 9007199254740992, expected an integer in [0, {MAX_SEED}]"),
    (["--data-seed", "-4"], f"seed is -4, expected an integer in [0, {MAX_SEED}]"),
    (["--lr", "nan"], "lr is nan, expected a finite number > 0"),
    (["--lr", "0"], "lr is 0.0, expected a finite number > 0"),
    (["--batch-size", "0"], "batch_size is 0, expected a positive integer"),
    (["--epochs", "-2"], "epochs is -2, expected a positive integer"),
    (["--rho", "nan"], "rho is nan, expected a number in [0, 1]"),
    (["--device", "cuda:7"], "--device cuda:7: "),
    (["--device", "foo"], "--device 'foo' is not a device name"),
    (["--device", "xpu"], "--device xpu: not available here; use --device cpu"),
]


@pytest.mark.parametrize("args, message", TRAIN_CASES)
def test_train_parameters_are_refused_before_any_compute(cli, tmp_path, no_compute, args, message):
    code, err = cli(*TRAIN, *args, "--out", tmp_path / "r")
    assert code == 2 and err.startswith("error:") and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        # a mistyped key of a text-valued param is named as unknown, never as "'sex' is not a number"
        (
            ["train", "--dataset", "adult", "--param", "bais=sex"],
            "dataset adult has no parameter(s) ['bais']; it takes: bias, holdout (did you mean bias?)",
        ),
        (
            ["train", "--dataset", "celeba", "--param", "roots=/data", "--param", "size=abc"],
            "dataset celeba has no parameter(s) ['roots']; it takes: root, target, bias, size, cache (did you mean root?)",
        ),
        (
            ["train", "--dataset", "biased-toy", "--param", "rho_rigth=sixty"],
            "recipe biased has no parameter(s) ['rho_rigth']; it takes: rho",
        ),
        (["data", "show", "adult", "--param", "bais=race"], "dataset adult has no parameter(s) ['bais']"),
        (["data", "show", "compas", "--param", "bais=race"], "dataset compas has no parameter(s) ['bais']"),
        (["data", "show", "compas", "--param", "bias=age"], "compas param bias must be one of race, race_binary, sex"),
        (
            ["bench", "adult", "--dataset", "german", "--out", "{tmp}/b"],
            "the tabular benchmark runs on adult or compas",
        ),
        (
            ["bench", "compare", "--suite", "compas", "--value", "age", "--out", "{tmp}/b"],
            "--value age: suite compas takes race, race_binary, sex",
        ),
        (
            ["bench", "compare", "--suite", "toy", "--value", "high", "--out", "{tmp}/b"],
            "--value high: suite toy takes numbers (the suite sweeps rho)",
        ),
        (
            ["train", "--dataset", "tensors:{tmp}/missing.safetensors", "--param", "lazzy=1"],
            "tensors:PATH has no parameter(s) ['lazzy']; it takes: lazy",
        ),
        (
            ["train", "--dataset", "folder:{tmp}/nothing", "--param", "bias_col=b"],
            "folder:DIR has no parameter(s) ['bias_col']; it takes: size, mode",
        ),
        # a known key with a bad value still says which value is not a number
        (["train", "--dataset", "adult", "--param", "holdout=lots"], "--param holdout: 'lots' is not a number"),
    ],
)
def test_unknown_param_names_are_refused_before_any_value_is_parsed(
    cli, tmp_path, monkeypatch, no_compute, args, message
):
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))  # nothing prepared: no data is read
    args = [a.format(tmp=tmp_path) for a in args] + (["--out", tmp_path / "r"] if args[0] == "train" else [])
    code, err = cli(*args)
    assert code == 2 and err.startswith("error:") and "Traceback" not in err, err
    assert message.format(tmp=tmp_path) in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def run(tmp_path, toy_run_dir):
    shutil.copytree(toy_run_dir, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize(
    "args, message",
    [
        (["ffw", "{run}", "--mode", "structured", "--gate-lr", "-1"], "gate_lr is -1.0, expected a finite number > 0"),
        (["ffw", "{run}", "--mode", "structured", "--gate-lr", "nan"], "gate_lr is nan, expected a finite number > 0"),
        (["ffw", "{run}", "--mode", "structured", "--patience", "-1"], "patience is -1, expected an integer >= 0"),
        (["ffw", "{run}", "--mode", "structured", "--gamma", "-1"], "gamma is -1.0, expected a finite number >= 0"),
        (["ffw", "{run}", "--mode", "structured", "--tau-decay", "1"], "tau_decay is 1.0, expected a number in (0, 1)"),
        (["ffw", "{run}", "--mode", "structured", "--tau-init", "0"], "tau_init is 0.0, expected a finite number > 0"),
        (["ffw", "{run}", "--mode", "unstructured", "--tau-init", "0.001"], "tau_final must lie in (0, tau_init]"),
        (["ffw", "{run}", "--mode", "structured", "--max-levels", "0"], "max_levels is 0, expected a positive integer"),
        (["ffw", "{run}", "--mode", "structured", "--seed", "-1"], "seed is -1, expected an integer"),
        (["ffw", "{run}", "--mode", "pruned"], "mode must be 'unstructured' or 'structured'"),
        (["ffw", "{run}", "--mode", "structured", "--device", "cuda:7"], "--device cuda:7: "),
        (["audit", "{run}", "--seed", "-1"], "seed is -1, expected an integer"),
        (["audit", "{run}", "--device", "foo"], "--device 'foo' is not a device name"),
        (["discover", "{run}", "--device", "cuda:7"], "--device cuda:7: "),
        (["unlearn", "{run}", "--top-k", "0"], "top_k is 0, expected a positive integer"),
        (["unlearn", "{run}", "--damping", "-1"], "damping is -1.0, expected a finite number >= 0"),
        (["unlearn", "{run}", "--seed", str(2**64)], "seed is 18446744073709551616, expected an integer"),
        (["unlearn", "{run}", "--device", "cuda:7"], "--device cuda:7: "),
    ],
)
def test_post_hoc_parameters_are_refused_before_any_compute(cli, run, no_compute, args, message):
    before = tree_bytes(run.parent)
    code, err = cli(*[a.format(run=run) for a in args])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert tree_bytes(run.parent) == before and sorted(p.name for p in run.parent.iterdir()) == ["run"]


# -- training data ---------------------------------------------------------------------------------------------


def _mlp(num_classes=3):
    return build_model("mlp", num_classes=num_classes, input_shape=(1, 4, 4))


@pytest.mark.parametrize(
    "data, message",
    [
        (TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)), "is empty: nothing to train on"),
        (
            TensorDataset(torch.zeros(8, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 10])),
            "training data targets must lie in [0, 2] (the model has 3 classes); samples [3, 7] have [3, 10]",
        ),
        (TensorDataset(torch.zeros(4, 1, 4, 4), torch.tensor([0, -1, 1, 2])), "targets must lie in [0, 2]"),
        (
            TensorDataset(torch.tensor([[[[float("nan")] * 4] * 4]] * 4), torch.tensor([0, 1, 2, 0])),
            "holds NaN/inf inputs (samples [0, 1, 2] ...); clean or drop them before training",
        ),
    ],
)
def test_bad_training_data_is_refused_before_training(data, message):
    with pytest.raises(DataError) as exc:
        fit(_mlp(), data, num_classes=3, config=TrainConfig(epochs=1), progress=False)
    assert message in str(exc.value), exc.value


def test_nan_inputs_of_a_lazy_dataset_are_named_not_blamed_on_the_learning_rate():
    class Lazy(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            x = torch.full((1, 4, 4), float("nan") if i == 5 else 0.5)
            return x, i % 3, 0

    with pytest.raises(Exception) as exc:
        fit(_mlp(), Lazy(), num_classes=3, config=TrainConfig(epochs=1, batch_size=4), progress=False)
    assert "the training inputs hold NaN/inf values (samples [5])" in str(exc.value)
    assert "lower the learning rate" not in str(exc.value)


def test_python_entry_points_share_the_rules():
    for kwargs, message in (
        ({"weight_decay": -1}, "weight_decay is -1"),
        ({"seed": 2**53}, "seed is 9007199254740992"),
        ({"lr": float("inf")}, "lr is inf"),
    ):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**kwargs)
    from debiaskit.data import make_splits
    from debiaskit.ffw import FFWConfig

    with pytest.raises(ConfigError, match="gate_lr is nan"):
        FFWConfig(gate_lr=float("nan"))
    with pytest.raises(ConfigError, match="seed is -1"):
        make_splits("biased-toy", seed=-1)


def test_data_show_biased_toy_works_with_the_default_unbiased_size(cli):
    code, out = cli("data", "show", "biased-toy", "--json")
    assert code == 0 and '"unbiased_val": { "size": 120' in out, out


# -- files on disk ---------------------------------------------------------------------------------------------


def test_parse_idx_with_a_forged_huge_header_is_a_clear_error():
    header = bytes([0, 0, 0x08, 4]) + (2**32 - 1).to_bytes(4, "big") * 4  # 2^128 bytes announced
    with pytest.raises(DataError, match="truncated or corrupt: header announces shape"):
        parse_idx(header + b"\x00" * 16, name="forged")


def test_a_tar_with_members_outside_its_folder_is_refused(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.bin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DataError, match="holds an unsafe member .*refusing to unpack it"):
        read_cifar10(archive)
    assert not (tmp_path.parent / "escaped.bin").exists()


def test_prepare_from_a_folder_names_the_users_file_not_a_temporary_copy(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    raw = tmp_path / "user" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    stems = {
        "train_images": ("train-images-idx3-ubyte", (60, 28, 28)),
        "train_labels": ("train-labels-idx1-ubyte", (60,)),
        "test_images": ("t10k-images-idx3-ubyte", (20, 28, 28)),
        "test_labels": ("t10k-labels-idx1-ubyte", (20,)),
    }
    for key, (stem, shape) in stems.items():
        write_idx(raw / f"{stem}.gz", rng.integers(0, 10, shape, dtype=np.uint8), compress=True)
        monkeypatch.setitem(get_source("mnist").md5, key, md5(gzip.decompress((raw / f"{stem}.gz").read_bytes())))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01" + (20).to_bytes(4, "big") + b"\x01" * 20)
    )
    code, err = cli("data", "prepare", "mnist", "--from", tmp_path / "user")
    assert code == 2 and f"checksum mismatch for {raw / 't10k-labels-idx1-ubyte.gz'}" in err, err
    assert "debiaskit-mnist-" not in err  # no deleted temporary copy named


def test_cifar_prepare_does_not_claim_checksums(cli, tmp_path, monkeypatch):
    from debiaskit.data._cifar import write_cifar_binary

    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    folder = tmp_path / "dl" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_binary(
            folder / f"{name}.bin", rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), np.arange(4) % 10
        )
    code, out = cli("data", "prepare", "cifar10", "--from", tmp_path / "dl")
    assert code == 0 and "no published checksums: file structure and labels checked" in out, out
    assert "checksums verified" not in out
