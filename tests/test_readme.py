"""The README and the user guide cannot drift from the code.

The guide's "Your own model and data" page runs as written: its Python snippets are executed in order, in a
folder holding what they refer to (``mynets.py`` - the benchmark's user model - and a small
``my-data.safetensors``), and its shell commands are run through the CLI. Every other Python snippet of the
README and of the guide is compiled and its imports are resolved (they need the real datasets and minutes of
training), and every ``debiaskit`` command line in them names commands and options the CLI has.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = ROOT / "docs" / "guide" / "your-model-and-data.md"
# the pages a user reads first: the README, the getting-started page and the user guide
PAGES = [
    README,
    ROOT / "docs" / "index.md",
    ROOT / "docs" / "getting-started.md",
    *sorted((ROOT / "docs" / "guide").glob("*.md")),
]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _command_lines(text: str) -> list[str]:
    """Every `debiaskit ...` line of the bash blocks (continuations joined, comments dropped)."""
    lines = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if "debiaskit " in line and not line.startswith(("pip", "make", "export")):
                lines.append(line[line.index("debiaskit ") :])
    return lines


@pytest.fixture()
def user_folder(tmp_path, monkeypatch):
    """mynets.py + my-data.safetensors (uint8 8 x 8 images, a bias on the background) + a waterbirds folder."""
    from PIL import Image

    from debiaskit.data import save_tensor_file

    shutil.copy(ROOT / "benchmarks" / "byo_user_model.py", tmp_path / "mynets.py")
    g = torch.Generator().manual_seed(0)
    n = 4000
    y = torch.arange(n) % 10
    split = torch.tensor([0, 0, 0, 1, 1, 2, 4, 4] * (n // 8))
    uniform = torch.randint(0, 10, (n,), generator=g)
    b = torch.where((split == 0) & (torch.rand(n, generator=g) < 0.9), y, uniform)
    x = torch.zeros(n, 1, 8, 8)
    x[:, 0, 2:6, 2:6] = (y[:, None, None] + 1) * 20.0  # the object: brightness by class
    x[:, 0, :1] += b[:, None, None] * 20.0  # the bias: a bright top row by bias class
    save_tensor_file(tmp_path / "my-data.safetensors", x=x.clamp(0, 255).to(torch.uint8), y=y, b=b, split=split)
    wb = tmp_path / "waterbirds"
    wb.mkdir()
    rows = ["path,y,place,split"]
    for i in range(40):
        Image.fromarray(np.full((8, 8, 3), 40 * (i % 2) + 10 * ((i // 2) % 2), dtype=np.uint8)).save(wb / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},{(i // 2) % 2},{i % 3}")
    (wb / "metadata.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mynets", None)


def _short_ffw_schedule(monkeypatch):
    """FFW with the README's arguments but a test-sized schedule (2 tau levels of at most 2 epochs, 3 epochs
    of privacy-head pre-training): the calls run as written, on a smaller budget."""
    from debiaskit.ffw import FFWConfig

    names = [f.name for f in dataclasses.fields(FFWConfig)]
    short = {"max_levels": 2, "max_epochs_per_level": 2, "head_pretrain_epochs": 3}
    defaults = tuple(short.get(n, d) for n, d in zip(names, FFWConfig.__init__.__defaults__))
    monkeypatch.setattr(FFWConfig.__init__, "__defaults__", defaults)


def test_your_own_model_and_data_page_runs_as_written(user_folder, monkeypatch, capsys, allow_harm):
    # allow_harm: the guide's calls on 40 images, whose models are near chance (the guard: test_ffw_no_harm.py)
    from debiaskit.cli import main

    section = RUNNABLE.read_text()
    namespace: dict = {"__name__": "readme"}
    _short_ffw_schedule(monkeypatch)
    for block in _blocks(section, "python"):
        exec(compile(block, RUNNABLE.name, "exec"), namespace)  # noqa: S102 - our own guide
    assert (user_folder / "runs" / "mine-ffw" / "ffw.json").is_file() and (
        user_folder / "runs" / "mine" / "discover"
    ).is_dir()
    commands = [
        line
        for block in _blocks(section, "bash")
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("debiaskit")
    ]
    assert commands
    for line in commands:
        args = shlex.split(line.split("#", 1)[0])[1:]
        if args[0] == "train":
            args += ["--force", "--no-progress"]  # the Python snippet made runs/mine already
        if args[0] == "ffw":
            args += ["--force", "--no-progress", "--max-levels", "2", "--max-epochs-per-level", "2"]
        if args[0] == "discover":
            args += ["--force"]
        monkeypatch.setattr(sys, "argv", ["debiaskit", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        assert (exc.value.code or 0) == 0, f"{line}: {capsys.readouterr().err}"


def test_every_other_python_snippet_compiles_and_imports():
    blocks = [(page, block) for page in PAGES if page != RUNNABLE for block in _blocks(page.read_text(), "python")]
    assert {page.name for page, _ in blocks} >= {"README.md", "audit.md", "ffw.md"}
    for page, block in blocks:
        compile(block, page.name, "exec")
        imports = "\n".join(
            line for line in block.splitlines() if line.startswith(("from debiaskit", "import debiaskit"))
        )
        exec(compile(imports, page.name, "exec"), {})  # noqa: S102 - names that no longer exist fail here


def _resolve(words: list[str]):
    """The click command a command line names, and the option words it gives (values dropped)."""
    import typer

    from debiaskit.cli import app

    command = typer.main.get_command(app)  # typer's own click classes: duck-typed, not isinstance(click.Group)
    rest = list(words)
    while rest and hasattr(command, "list_commands") and not rest[0].startswith("-"):
        sub = command.get_command(command.context_class(command), rest[0])
        assert sub is not None, f"no command {rest[0]!r} in `{' '.join(words)}`"
        command, rest = sub, rest[1:]
    return command, [w.split("=", 1)[0] for w in rest if w.startswith("--")]


def test_every_command_line_names_commands_and_options_that_exist():
    checked = 0
    for page in PAGES:
        for line in _command_lines(page.read_text()):
            words = shlex.split(re.split(r"\s(?:&&|\||;)\s", line)[0])[1:]
            command, options = _resolve(words)
            known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
            unknown = [opt for opt in options if opt not in known]
            assert not unknown, f"{page.name}: `{line}`: no option {unknown} (known: {sorted(known)})"
            checked += 1
    assert checked > 20


def test_a_wrong_command_line_is_caught():
    with pytest.raises(AssertionError, match="no command"):
        _resolve(["ffww", "runs/v0"])
    command, options = _resolve(["ffw", "runs/v0", "--mode", "structured", "--no-such-option"])
    assert command.name == "ffw" and "--no-such-option" in options
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    assert "--no-such-option" not in known and "--mode" in known
