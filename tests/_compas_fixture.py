"""A tiny ProPublica COMPAS in the real on-disk format (never the real data in tests).

``compas-scores-two-years.csv``: the file's own 53-column header (``decile_score`` and ``priors_count`` appear
twice), quoted names with commas, empty fields, and rows that ProPublica's filtering removes (screening more
than 30 days from the arrest or unknown, is_recid -1, charge degree O, score N/A). Recidivism depends on
priors (learnable) and on race and sex (so the bias is real).
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np

HEADER = (
    "id,name,first,last,compas_screening_date,sex,dob,age,age_cat,race,juv_fel_count,decile_score,"
    "juv_misd_count,juv_other_count,priors_count,days_b_screening_arrest,c_jail_in,c_jail_out,c_case_number,"
    "c_offense_date,c_arrest_date,c_days_from_compas,c_charge_degree,c_charge_desc,is_recid,r_case_number,"
    "r_charge_degree,r_days_from_arrest,r_offense_date,r_charge_desc,r_jail_in,r_jail_out,violent_recid,"
    "is_violent_recid,vr_case_number,vr_charge_degree,vr_offense_date,vr_charge_desc,type_of_assessment,"
    "decile_score,score_text,screening_date,v_type_of_assessment,v_decile_score,v_score_text,v_screening_date,"
    "in_custody,out_custody,priors_count,start,end,event,two_year_recid"
).split(",")

# {(two_year_recid, race, sex): kept rows}; every (y, race) and (y, sex) group has >= 20 rows
LAYOUT = {
    (y, race, sex): n
    for (y, race), base in {
        (0, "African-American"): 12,
        (1, "African-American"): 14,
        (0, "Caucasian"): 14,
        (1, "Caucasian"): 10,
        (0, "Hispanic"): 5,
        (1, "Hispanic"): 5,
    }.items()
    for sex, n in (("Male", base), ("Female", base // 2 + 5))
}
# rows ProPublica's filter drops: (days_b_screening_arrest, is_recid, c_charge_degree, score_text)
FILTERED = (
    ("45", "0", "F", "Low"),
    ("", "1", "M", "High"),
    ("-31", "0", "F", "Low"),
    ("1", "-1", "F", "Low"),
    ("0", "0", "O", "Medium"),
    ("-1", "1", "F", "N/A"),
)


def _row(rng: np.random.Generator, i: int, y: int, race: str, sex: str, *, filtered=None) -> list[str]:
    days, is_recid, degree, score = filtered or (
        str(int(rng.integers(-3, 4))),
        str(y),
        str(rng.choice(["F", "M"])),
        str(rng.choice(["Low", "Medium", "High"])),
    )
    priors = int(rng.integers(3, 12) if y else rng.integers(0, 4))
    age = int(rng.integers(19, 40) if y else rng.integers(25, 70))
    values = {
        "id": str(i),
        "name": f"person {i}, jr",
        "first": "person",
        "last": str(i),
        "sex": sex,
        "age": str(age),
        "age_cat": "25 - 45",
        "race": race,
        "juv_fel_count": str(int(rng.integers(0, 2))),
        "decile_score": str(int(rng.integers(1, 11))),
        "juv_misd_count": str(int(rng.integers(0, 3))),
        "juv_other_count": "0",
        "priors_count": str(priors),
        "days_b_screening_arrest": days,
        "c_charge_degree": degree,
        "c_charge_desc": "Battery",
        "is_recid": is_recid,
        "score_text": score,
        "two_year_recid": str(y),
        "type_of_assessment": "Risk of Recidivism",
    }
    return [values.get(column, "") for column in HEADER]


def write_compas_folder(folder: Path, *, seed: int = 0) -> dict[str, str]:
    """Write compas-scores-two-years.csv into ``folder``; return its SHA-256 checksum as COMPAS_SHA256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [(y, race, sex, None) for (y, race, sex), n in LAYOUT.items() for _ in range(n)]
    rows += [(1, "Caucasian", "Male", f) for f in FILTERED]
    order = rng.permutation(len(rows))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for i, k in enumerate(order):
        y, race, sex, filtered = rows[k]
        writer.writerow(_row(rng, i + 1, y, race, sex, filtered=filtered))
    path = folder / "compas-scores-two-years.csv"
    path.write_text(out.getvalue())
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}


def kept(*, race=None, y=None, sex=None) -> int:
    return sum(
        n
        for (t, r, s), n in LAYOUT.items()
        if (race is None or r in race) and (y is None or t == y) and (sex is None or s == sex)
    )
