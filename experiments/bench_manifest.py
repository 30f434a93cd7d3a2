"""Checking and indexing a user's manifest: N rows (100,000 by default) of patches, files stat-ed, not decoded.

The files are hard links to one small PNG (the directory entries are real, the disk stays small); the table
goes through `read_manifest`, the function `python train.py data=manifest` and `python -m masf_lightning.data.index`
call. Goal (issue "Any dataset with magnifications"): ≤ 10 s for 100,000 rows on 2 cores.

    python experiments/bench_manifest.py --rows 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from masf_lightning.data.sources import read_manifest


def bench_manifest(rows: int = 100_000) -> dict[str, Any]:
    """Seconds to read and check a `rows`-row manifest (4 domains, 3 classes, 1,000 patients), files on disk."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(rows // 10_000 + 1):  # a filesystem allows some 65,000 links to one file
            Image.new("RGB", (8, 8), (200, 120, 180)).save(root / f"src{k}.png")
        domains = np.array(["5x", "10x", "20x", "40x"])
        per = rows // 4
        frame = pd.DataFrame({
            "path": [f"d{i % 4}/p{i // 400:04d}/img{i:06d}.png" for i in range(rows)],
            "domain": domains[np.arange(rows) % 4], "mpp": (2.0 / 2 ** (np.arange(rows) % 4)),
            "patient": [f"P{(i // 4) % 1000:04d}" for i in range(rows)], "label": np.array(["a", "b", "c"])[(np.arange(rows) // 4) % 3],
        })  # fmt: skip
        for folder in {str(Path(p).parent) for p in frame["path"]}:
            (root / folder).mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(frame["path"]):
            os.link(root / f"src{i // 10_000}.png", root / p)
        frame.to_csv(root / "manifest.csv", index=False)
        started = time.perf_counter()
        table = read_manifest(root / "manifest.csv")
        seconds = time.perf_counter() - started
        assert len(table.frame) == rows and table.domains == ("5x", "10x", "20x", "40x"), per
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds), "goal_s": 10.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    result = bench_manifest(ap.parse_args().rows)
    print(f"manifest check  {result['rows']:,} rows in {result['seconds']:.2f} s ({result['rows_per_s']:,} rows/s; goal ≤ 10 s)")


if __name__ == "__main__":
    main()
