"""`debiaskit train` and `debiaskit audit`."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import typer

from .._io import check_output
from ..errors import ConfigError
from ._common import TRUST_CODE_HELP, app, console, esc, parse_params
from .cmd_data import _print_groups

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


def _builtin_methods() -> list[str]:
    """The built-in methods for the help text, read from the ``MethodInfo(name=...)`` of the files of
    debiaskit.methods without importing them (`--help` stays fast; a name that is not a literal is the file's
    name). Methods you register yourself work too; `debiaskit methods list` shows every registered one."""
    import ast
    import importlib.util
    import pkgutil
    from pathlib import Path

    spec = importlib.util.find_spec("debiaskit.methods")
    names = []
    for module in pkgutil.iter_modules(spec.submodule_search_locations):
        if module.name.startswith("_"):
            continue
        tree = ast.parse((Path(module.module_finder.path) / f"{module.name}.py").read_text())
        found = [
            kw.value.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MethodInfo"
            for kw in node.keywords
            if kw.arg == "name" and isinstance(kw.value, ast.Constant)
        ]
        names += found or [module.name]
    return sorted(names, key=lambda n: (n != "vanilla", n))


@app.command()
def train(
    dataset: str = typer.Option(..., help="dataset name (see `debiaskit data list`)"),
    out: Path = typer.Option(..., help="run folder to create"),
    rho: float | None = typer.Option(None, help="bias correlation of the training set"),
    param: list[str] | None = typer.Option(
        None, "--param", help="dataset parameter KEY=VALUE (celeba: root=DIR, target=..., bias=..., size=64)"
    ),
    model: str = typer.Option(
        "simple-conv-small",
        help="zoo model (see `debiaskit models list`) or your own as "
        "package.module:factory (the current folder is importable)",
    ),
    model_arg: list[str] | None = typer.Option(
        None,
        "--model-arg",
        help="argument of your model factory KEY=VALUE "
        "(Python literals; num_classes / in_channels / in_features / "
        "input_shape are filled in when the factory takes them)",
    ),
    head: str | None = typer.Option(
        None,
        help="the classifier head module of your model (default: its "
        "head_name, or its only nn.Linear with num_classes outputs)",
    ),
    method: str = typer.Option(
        "vanilla",
        help=f"training method: {', '.join(_builtin_methods())} (`debiaskit methods list` says what each needs)",
    ),
    method_param: list[str] | None = typer.Option(
        None,
        "--method-param",
        help="method hyper-parameter KEY=VALUE (repeat; see `debiaskit methods list`), e.g. --method-param lambda_up=20",
    ),
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    seed: int = 0,
    data_seed: int | None = typer.Option(None, help="seed of the dataset draw (default: --seed)"),
    unbiased_size: int | None = typer.Option(
        None,
        help="held-out training samples for D^u (default 10000, or 30% of a smaller source: 600 for the toy digits)",
    ),
    train_size: int | None = None,
    test_size: int | None = None,
    device: str = "cpu",
    force: bool = typer.Option(False, help="replace an existing run folder (only a finished run)"),
    progress: bool = True,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="continue an interrupted run (Ctrl-C, crash, kill) from its last finished epoch: the same command plus --resume; the result equals an uninterrupted run's",
    ),
    record_dynamics: bool = typer.Option(
        False,
        "--record-dynamics",
        help="also write RUN/dynamics.safetensors (per-sample loss, correctness and attractor per epoch) for `debiaskit discover`",
    ),
    amp: str = typer.Option(
        "off", help="mixed precision of the training steps: off, bf16 or fp16 (fp16 scales the loss)"
    ),
    record_readings: bool = typer.Option(
        True,
        help="audit the trained model at the end (the audit and the stronger probes, as `debiaskit ffw` reads its "
        "input model) and record the numbers in run.json, signed: `debiaskit ffw RUN` reuses them instead of "
        "computing them again; not counted in the training's wall time",
    ),
    sync_bn: bool = typer.Option(
        False,
        "--sync-bn",
        help="under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm) instead of each rank's shard; recorded in run.json",
    ),
) -> None:
    """Train a model on a biased dataset and write a run folder.

    Data-parallel: ``torchrun --nproc-per-node N -m debiaskit train ...`` (--batch-size is the global batch)."""
    from .._dist import check_sync_bn
    from .._validate import check_device
    from ..data import param_names, text_params
    from ..ffw import vanilla_readings
    from ..models import parse_model_args
    from ..train import TrainConfig, partial_dir, train_run

    check_device(device)
    if sync_bn:
        check_sync_bn(device)
    model_args = parse_model_args(model_arg)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        seed=seed,
        amp=amp,
        sync_bn=sync_bn,
    )
    method_obj, method_cfg = _method(method, dataset, method_param)
    params = parse_params(rho, param, text_keys=text_params(dataset), names=param_names(dataset))
    splits = _user_splits(
        dataset,
        params=params,
        seed=seed if data_seed is None else data_seed,
        out=out,
        force=force,
        unbiased_size=unbiased_size,
        train_size=train_size,
        test_size=test_size,
    )
    try:
        folder, result = train_run(
            dataset=dataset,
            out=out,
            model=model,
            model_args=model_args,
            head=head,
            params=params,
            config=cfg,
            splits=splits,
            method=method_obj,
            method_config=method_cfg,
            data_seed=data_seed,
            unbiased_size=unbiased_size,
            train_size=train_size,
            test_size=test_size,
            device=device,
            force=force,
            progress=progress,
            record_dynamics=record_dynamics,
            resume=resume,
            readings=partial(vanilla_readings, device=device) if record_readings else None,
        )
    except KeyboardInterrupt:
        if (partial_dir(out) / "checkpoint.safetensors").is_file():
            console.print(
                f"[yellow]interrupted[/yellow]: the last finished epoch is kept in {esc(partial_dir(out))}; "
                "continue with the same command plus --resume"
            )
        raise
    last = result.history[-1]
    console.print(
        f"[green]trained[/green] {esc(model)} on {esc(dataset)} in {result.wall_time_s:.1f}s "
        f"(final train loss {last.get('loss', float('nan')):.4f}); run folder: {esc(folder)}",
        soft_wrap=True,
    )


def _user_splits(dataset: str, *, params: dict, seed: int, out: Path, force: bool, **sizes):
    """Your own data (tensors:PATH, folder:DIR): its splits, said how they were made, with realised rho and
    (target, bias) group counts, before training starts. None for the named datasets (train_run makes them)."""
    from ..data import is_user_dataset, make_splits
    from ..train import RUN_FOLDER

    if not is_user_dataset(dataset):
        return None
    check_output(out, kind=RUN_FOLDER, force=force)  # before reading the user's files
    splits = make_splits(dataset, params=params, seed=seed, **sizes)
    rho = {n: s.summary().get("realised_rho") for n, s in splits.items()}
    console.print(
        "realised rho (share of bias-aligned samples): "
        + esc(", ".join(f"{n} {v:.4f}" if isinstance(v, float) else f"{n} {v}" for n, v in rho.items())),
        highlight=False,
    )
    _print_groups({n: s.summary() for n, s in splits.items()}, splits_from=splits.spec.get("splits_from"))
    return splits


def _method(name: str, dataset: str, params: list[str] | None = None):
    from ..methods import build_method, method_defaults

    given = parse_method_params(params)
    defaults = method_defaults(name, dataset) if given else {}
    for key, value in given.items():
        if key in defaults:  # an unknown key is refused by build_method, listing the valid ones
            check_method_value(key, value, defaults[key].value)
    return build_method(name, dataset=dataset, **given)


def parse_method_params(items: list[str] | None) -> dict:
    """``["lambda_up=20", "refit=true", "discovery=gce"]`` -> {"lambda_up": 20, "refit": True, "discovery": "gce"}:
    a value is read as JSON (numbers, true/false, null) and otherwise kept as text; an empty value and a
    non-finite number (nan, inf) are refused."""
    import json

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--method-param takes KEY=VALUE, got {item!r}")
        key = key.strip()
        if key in out:  # refused, never the last one silently winning
            raise ConfigError(f"--method-param {key} is given twice ({out[key]} and {value}): give it once")
        if not value.strip():
            raise ConfigError(f"--method-param {key}: the value is empty")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if _non_finite(out[key]):
            raise ConfigError(f"--method-param {key}: {value!r} is not a finite number")
    return out


def _non_finite(value: object) -> bool:
    """nan / inf as a number or as text (float() reads 'nan', 'inf', 'Infinity')."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def check_method_value(key: str, value: object, default: object) -> None:
    """A hyper-parameter whose default is a number takes a number, a flag takes true/false: said before the
    method is built (a text 'abc' would otherwise end in a TypeError inside it)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--method-param {key}: {value!r} is not true or false")
    elif isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"--method-param {key}: {value!r} is not a number (default {default!r})")


@app.command()
def audit(
    run_dir: Path,
    out: Path | None = typer.Option(None, help="report folder (default RUN_DIR/audit)"),
    seed: int = 0,
    device: str = "cpu",
    force: bool = typer.Option(False, help="replace an earlier audit report folder at --out"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP),
) -> None:
    """Audit a trained run (or an FFW folder's exported model) for bias: table on the terminal, JSON + Markdown +
    plots on disk."""
    from ..audit import audit_run, render_table, render_where

    if (run_dir / "ffw.json").is_file():  # an FFW folder: its exported network, on the run's data
        from ..ffw import audit_ffw_folder

        report, folder = audit_ffw_folder(
            run_dir, out=out, seed=seed, device=device, force=force, trust_code=trust_code
        )
    else:
        report, folder = audit_run(run_dir, out=out, seed=seed, device=device, force=force, trust_code=trust_code)
    console.print(render_table(report, title=f"Bias audit of {esc(run_dir)}"))
    for table in render_where(report):  # where the bias is read: blocks, bottleneck, within each class
        console.print(table)
    if report.below_majority():
        console.print(f"[bold yellow]warning:[/bold yellow] {esc(report.below_majority())}", highlight=False)
    console.print(
        f"report: {esc(folder / 'report.md')}  json: {esc(folder / 'audit.json')}  plots: {esc(folder)}/*.png",
        highlight=False,
        soft_wrap=True,
    )
