from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
R_DIR = ROOT / "validation" / "r"
NELS_CSV = ROOT.parent / "shared" / "data" / "nels.csv"


def load_json(name: str) -> dict:
    return json.loads((R_DIR / name).read_text())


def load_csv(name: str) -> pd.DataFrame:
    return pd.read_csv(R_DIR / "data" / name)


@pytest.fixture(scope="session")
def nels() -> pd.DataFrame:
    if not NELS_CSV.exists():
        pytest.skip(f"NELS data not available at {NELS_CSV}")
    return pd.read_csv(NELS_CSV)
