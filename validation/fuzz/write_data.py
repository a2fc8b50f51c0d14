"""Write the fuzz cases' data sets for ``validation/r/fuzz_lme4.R``.

Run from the repository root::

    python -m validation.fuzz.write_data            # -> validation/r/fuzz_data/
    Rscript validation/r/fuzz_lme4.R                # -> validation/r/fuzz_lme4.json

The folder is git-ignored (the data are regenerated from the seeds; the
committed JSON stores each data set's checksum).  ``manifest.json`` lists
every case: name, category, formula, CSV file, checksum.  The CSVs are
written with ``%.17g`` so that R reads exactly the numbers Python fitted.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cases import CASES, checksum

DATA_DIR = Path(__file__).resolve().parent.parent / "r" / "fuzz_data"


def write(out: Path = DATA_DIR) -> Path:
    """Write every case's CSV and the manifest to ``out``; return the manifest's path."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for c in CASES:
        d = c.data()
        path = out / f"{c.name}.csv"
        d.to_csv(path, index=False, float_format="%.17g")
        manifest.append({"name": c.name, "category": c.category, "formula": c.formula,
                         "note": c.note, "csv": path.name, "seed": c.seed,
                         "checksum": checksum(d)})
    mpath = out / "manifest.json"
    mpath.write_text(json.dumps(manifest, indent=1))
    return mpath


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="output folder")
    args = ap.parse_args(argv)
    path = write(args.out)
    print(f"{path}: {len(CASES)} cases")


if __name__ == "__main__":
    main()
