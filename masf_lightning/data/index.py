"""`python -m masf_lightning.data.index FILE_OR_DIR`: check a dataset table and print domains × classes × patients.

The same reading and checks as `python train.py data=manifest data.manifest=FILE` (or `data=folder data.root=DIR`)
run before any work, without training: a user sees what the run will see, or the one line that is wrong.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from masf_lightning.data.sources import open_table
from masf_lightning.errors import MasfError


def guess_format(path: Path) -> str:
    """A file is a manifest; a folder holding BreaKHis_v1 (or its inner folders) is BreaKHis; another folder is
    DIR/<domain>/<class>/<image>."""
    if path.is_file() or not path.exists():
        return "manifest"
    from masf_lightning.data.breakhis import find_breast_dir

    try:
        find_breast_dir(path)
        return "breakhis"
    except MasfError:
        return "folder"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m masf_lightning.data.index", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a manifest (CSV/Parquet), a DIR/<domain>/<class>/<image> folder, or a BreaKHis root")
    parser.add_argument("--format", choices=("manifest", "folder", "breakhis"), help="default: guessed from SOURCE")
    parser.add_argument("--task", help="the label column to count classes of (default: the first)")
    parser.add_argument("--patient-regex", help="folder: the one-group pattern finding the patient in a file name")
    parser.add_argument("--domains", nargs="+", help="the domains' order when they carry no mpp")
    parser.add_argument("--on-bad-file", choices=("raise", "skip"), default="raise")
    args = parser.parse_args(argv)
    fmt = args.format or guess_format(args.source)
    started = time.perf_counter()
    try:
        table = open_table(
            fmt,
            root=None if fmt == "manifest" else str(args.source),
            manifest=str(args.source) if fmt == "manifest" else None,
            domains=args.domains,
            patient_regex=args.patient_regex,
            on_bad_file=args.on_bad_file,
        )
        print(table.summary(args.task))
    except MasfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"checked in {time.perf_counter() - started:.1f} s ({fmt}; files stat-ed, not decoded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
