"""Fault injection, trust: a run folder is data, never code. A record naming code to import is refused before
anything is imported unless this user signed it (or passes --trust-code / runs `debiaskit trust`); weights are
identified by their SHA-256; an interrupted search resumes only on the run it started on."""

from __future__ import annotations

import itertools
import json
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch

from debiaskit import _trust
from debiaskit._schema import SchemaError
from debiaskit.errors import ConfigError, DamagedError, ModelError, UntrustedCodeError
from debiaskit.runs import RUN_FILE, WEIGHTS_FILE, load_run, trust_folder
from debiaskit.train import TrainConfig, TrainingMethod, partial_dir, train_run

_names = itertools.count()
USER_MODULE = """
import os
from pathlib import Path
from torch import nn
if os.environ.get("DEBIASKIT_TEST_MARKER"):   # top-level code: it runs when the module is imported
    Path(os.environ["DEBIASKIT_TEST_MARKER"]).touch()
def net(num_classes, in_features):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
"""


def _edit(run: Path, change) -> None:
    (run / RUN_FILE).write_text(json.dumps(change(json.loads((run / RUN_FILE).read_text())), indent=2))


@pytest.fixture
def run(tmp_path, toy_run_dir):
    shutil.copytree(toy_run_dir, tmp_path / "run")
    return tmp_path / "run"


def _os_system(marker: Path, *, source="import", **extra):
    """A run.json from someone else (unsigned) whose model is os.system with a command."""

    def change(meta):
        meta.pop("signature", None)
        meta["model"] = {
            **meta["model"],
            "name": "os:system",
            "source": source,
            "args": {"command": f"touch {marker} # [bold]x[/bold]"},
            **extra,
        }
        return meta

    return change


# -- a hostile run.json: nothing it names runs ---------------------------------------------------------------------


@pytest.mark.parametrize("command", [["audit"], ["ffw", "--mode", "structured"], ["discover"], ["unlearn"]])
def test_a_run_json_naming_os_system_runs_nothing_on_any_command(cli, run, tmp_path, command):
    marker = tmp_path / "pwned"
    _edit(run, _os_system(marker))
    code, out = cli(command[0], run, *command[1:])
    assert code == 2 and not marker.exists(), out
    assert "not trusted" in out and f"os:system(command='touch {marker} # [bold]x[/bold]')" in out, out  # as it is
    assert f"debiaskit trust {run}" in out
    assert "Nothing was imported" in out and "--trust-code" in out


def test_load_run_refuses_it_and_trust_code_needs_the_recorded_hash(run, tmp_path):
    marker = tmp_path / "pwned"
    _edit(run, _os_system(marker))
    with pytest.raises(UntrustedCodeError, match="no signature of yours"):
        load_run(run)
    with pytest.raises(UntrustedCodeError, match="holds no SHA-256 of its source"):
        load_run(run, trust_code=True)  # --trust-code trusts code as recorded: nothing is recorded
    _edit(run, _os_system(marker, sha256="0" * 64))
    with pytest.raises(ModelError, match="refusing to rebuild.*nothing of it was imported"):
        load_run(run, trust_code=True)  # the file Python would import is not the one recorded
    _edit(run, _os_system(marker, source="zoo"))
    with pytest.raises(ModelError, match="'os:system' is not in debiaskit's zoo"):
        load_run(run)  # only source="import" may name code (and it is checked)
    assert not marker.exists()


def test_a_source_file_in_the_folder_is_not_imported(run, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("DEBIASKIT_TEST_MARKER", str(marker))
    name = f"evil_{next(_names)}"
    (run / f"{name}.py").write_text(USER_MODULE)
    _edit(
        run,
        lambda m: {
            **m,
            "model": {
                **m["model"],
                "name": f"{name}:net",
                "source": "import",
                "args": {},
                "source_file": str(run / f"{name}.py"),
            },
        },
    )
    for trust_code in (False, True):
        with pytest.raises(UntrustedCodeError, match=f"{name}.py"):
            load_run(run, trust_code=trust_code)
    assert not marker.exists() and name not in sys.modules


def test_an_ffw_json_naming_os_system_runs_nothing(tmp_path):
    from debiaskit.ffw import load_ffw_model
    from debiaskit.models import build_model
    from debiaskit.runs import save_weights

    folder, marker = tmp_path / "ffw", tmp_path / "pwned"
    folder.mkdir()
    info = json.loads((Path(__file__).parent / "fixtures" / "v0" / "ffw.json").read_text())
    save_weights(build_model("mlp", num_classes=10, input_shape=(3, 28, 28)), folder / "model.safetensors")
    (folder / "ffw.json").write_text(json.dumps(_os_system(marker)(info)))
    with pytest.raises(UntrustedCodeError, match="ffw.json names code"):
        load_ffw_model(folder)
    assert not marker.exists()


def test_trusting_an_old_ffw_folder_pins_its_weights(tmp_path):
    from debiaskit.ffw import load_ffw_model
    from debiaskit.models import build_model
    from debiaskit.runs import save_weights

    folder = tmp_path / "ffw"
    folder.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "v0" / "ffw.json", folder / "ffw.json")  # 0.1.0: no hashes
    torch.manual_seed(0)
    save_weights(build_model("mlp", num_classes=10, input_shape=(3, 28, 28)), folder / "model.safetensors")
    load_ffw_model(folder)  # old records load unchecked (migration)
    report = trust_folder(folder)
    assert report.before == "unsigned" and not report.needs_code and report.signed
    info = json.loads((folder / "ffw.json").read_text())
    assert _trust.signature_state(info) == "signed" and len(info["weights_sha256"]) == 64
    torch.manual_seed(1)
    save_weights(build_model("mlp", num_classes=10, input_shape=(3, 28, 28)), folder / "model.safetensors")
    with pytest.raises(DamagedError, match="ffw.json was written with"):
        load_ffw_model(folder)


# -- signed own runs, tampering, `debiaskit trust` -----------------------------------------------------------------


@pytest.fixture
def user_run(tmp_path, toy_splits, monkeypatch):
    """A run of the user's own model (a module whose import touches a marker), trained here: signed."""
    name = f"trustnets_{next(_names)}"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(code))
    marker = tmp_path / "imported"
    monkeypatch.setenv("DEBIASKIT_TEST_MARKER", str(marker))
    out = tmp_path / "run"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=out,
        splits=toy_splits,
        model=f"{name}:net",
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
    )
    yield out, name, marker
    sys.modules.pop(name, None)


def _forget(name: str, marker: Path) -> None:
    sys.modules.pop(name, None)
    marker.unlink(missing_ok=True)


def test_own_runs_are_signed_and_load_with_no_flag(user_run):
    out, name, marker = user_run
    raw = json.loads((out / RUN_FILE).read_text())
    assert _trust.signature_state(raw) == "signed" and len(raw["weights_sha256"]) == 64
    _forget(name, marker)
    assert load_run(out).model is not None and marker.exists()


def test_a_tampered_record_is_refused_until_trusted_again(user_run, cli):
    out, name, marker = user_run
    _forget(name, marker)
    text = (out / RUN_FILE).read_text()
    assert '"epochs": 1,' in text
    (out / RUN_FILE).write_text(text.replace('"epochs": 1,', '"epochs": 2,', 1))  # one byte
    with pytest.raises(UntrustedCodeError, match="changed after it was signed"):
        load_run(out)
    code, shown = cli("trust", out, "--show")
    assert code == 0 and f"{name}:net" in shown and "nothing signed" in shown and not marker.exists(), shown
    with pytest.raises(UntrustedCodeError):
        load_run(out)
    code, shown = cli("trust", out)
    assert code == 0 and "trusted" in shown and "the recorded one" in shown and not marker.exists(), shown
    assert load_run(out).model is not None and marker.exists()


def test_a_record_signed_with_another_key_needs_trust(user_run, tmp_path, monkeypatch):
    out, name, marker = user_run
    _forget(name, marker)
    monkeypatch.setenv(_trust.CONFIG_ENV, str(tmp_path / "another-user"))
    with pytest.raises(UntrustedCodeError, match="signed with another key"):
        load_run(out)
    assert not marker.exists()
    assert load_run(out, trust_code=True).model is not None  # the recorded source is the one imported
    assert trust_folder(out).before == "other-key"
    assert _trust.signature_state(json.loads((out / RUN_FILE).read_text())) == "signed"


def test_zoo_runs_need_no_trust(run, tmp_path, monkeypatch):
    monkeypatch.setenv(_trust.CONFIG_ENV, str(tmp_path / "another-user"))
    raw = json.loads((run / RUN_FILE).read_text())
    raw.pop("signature")
    (run / RUN_FILE).write_text(json.dumps(raw))
    assert load_run(run).record.model.source == "zoo"


# -- the key file ----------------------------------------------------------------------------------------------------


def test_the_key_is_created_once_private_and_a_bad_key_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(_trust.CONFIG_ENV, str(tmp_path / "cfg"))
    key = _trust.user_key()
    path = _trust.key_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and _trust.user_key() == key
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary file left
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by you alone.*chmod 600"):
        _trust.user_key()
    with pytest.raises(ConfigError, match="chmod 600"):  # said before training, not when run.json is written
        train_run(dataset="biased-toy", out=tmp_path / "run", model="mlp", unbiased_size=600, progress=False)
    assert not (tmp_path / "run").exists()
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a debiaskit signing key"):
        _trust.user_key()
    path.unlink()
    elsewhere = tmp_path / "planted"
    path.symlink_to(elsewhere)  # a dangling symlink: creating the key must not write through it
    with pytest.raises(ConfigError, match="symbolic link is never followed"):
        _trust.user_key()
    assert not elsewhere.exists()
    path.unlink()
    (path.parent).chmod(0o777)
    with pytest.raises(ConfigError, match="can be written by other users"):
        _trust.user_key()


# -- weights identity ------------------------------------------------------------------------------------------------


def test_swapped_or_edited_weights_are_refused(run, tmp_path, toy_splits, cli):
    other = tmp_path / "other"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=other,
        splits=toy_splits,
        model="mlp",
        config=TrainConfig(epochs=1, seed=1),
        progress=False,
    )
    original = (run / WEIGHTS_FILE).read_bytes()
    shutil.copy(other / WEIGHTS_FILE, run / WEIGHTS_FILE)  # another run of the same architecture
    with pytest.raises(DamagedError, match="is not the weights file .*run.json was written with"):
        load_run(run)
    code, out = cli("audit", run)
    assert code == 2 and "SHA-256" in out and "restore the folder" in out, out
    edited = bytearray(original)
    edited[-200:] = bytes(200)  # 50 float32 overwritten
    (run / WEIGHTS_FILE).write_bytes(bytes(edited))
    with pytest.raises(DamagedError, match="SHA-256"):
        load_run(run)
    before = (run / RUN_FILE).read_bytes()
    code, out = cli("trust", run)
    assert code == 2 and "SHA-256" in out and (run / RUN_FILE).read_bytes() == before, out  # not signed
    (run / WEIGHTS_FILE).write_bytes(original)
    assert load_run(run).weights_sha256 == json.loads((run / RUN_FILE).read_text())["weights_sha256"]


@pytest.mark.parametrize(
    "weights, message",
    [
        (
            ".",
            "weights is \".\", expected a relative path inside the folder (no '..', not absolute, not the folder itself)",
        ),
        ("./", "not the folder itself"),
        ("sub", "weights is 'sub', which is not a file"),
    ],
)
def test_a_weights_path_that_is_not_a_file_inside_the_folder_is_refused(run, weights, message):
    (run / "sub").mkdir()
    _edit(run, lambda m: {**m, "weights": weights})
    with pytest.raises(SchemaError) as exc:
        load_run(run)
    assert message in str(exc.value), exc.value


# -- resume identity -------------------------------------------------------------------------------------------------


def test_an_ffw_search_resumes_only_on_the_run_it_started_on(toy_run_dir, tmp_path, toy_splits, monkeypatch):
    import debiaskit.ffw._search as search
    from debiaskit.ffw import ffw_run

    run_a, run_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "f"
    shutil.copytree(toy_run_dir, run_a)
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=run_b,
        splits=toy_splits,
        model="mlp",
        config=TrainConfig(epochs=1, seed=1),
        progress=False,
    )
    real, calls = search._Search.run_epoch, {"n": 0}

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    fast = dict(
        mode="structured",
        out=out,
        max_levels=2,
        max_epochs_per_level=1,
        audit_counterfactual=False,
        strong_probes=False,
        tune_epochs=0,
    )
    monkeypatch.setattr(search._Search, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ffw_run(run_a, **fast)
    monkeypatch.setattr(search._Search, "run_epoch", real)
    assert (partial_dir(out) / "checkpoint.safetensors").is_file()
    with pytest.raises(
        ConfigError,
        match="started on another input \\(the run's weights file, the frozen model's weights differ\\).*--force",
    ):
        ffw_run(run_b, resume=True, **fast)
    shutil.rmtree(run_a)
    shutil.copytree(run_b, run_a)  # RUN_A retrained in place
    with pytest.raises(ConfigError, match="started on another input"):
        ffw_run(run_a, resume=True, **fast)
    assert (partial_dir(out) / "checkpoint.safetensors").is_file()  # refused, not discarded


class _Interrupted(TrainingMethod):
    def training_step(self, batch, ctx):
        if ctx.epoch == 1:
            raise KeyboardInterrupt
        return super().training_step(batch, ctx)


def test_train_resume_refuses_other_data_or_model(tmp_path, toy_splits):
    out = tmp_path / "run"
    kw = dict(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=out,
        config=TrainConfig(epochs=2, seed=0),
        progress=False,
        unbiased_size=600,
    )
    with pytest.raises(KeyboardInterrupt):
        train_run(model="mlp", method=_Interrupted(), **kw)
    with pytest.raises(ConfigError, match="data"):
        train_run(model="mlp", resume=True, data_seed=1, **kw)
    with pytest.raises(ConfigError, match="model"):
        train_run(model="simple-conv-small", resume=True, **kw)
    assert (partial_dir(out) / "checkpoint.safetensors").is_file()
