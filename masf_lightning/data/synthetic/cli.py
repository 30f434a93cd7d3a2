"""`python -m masf_lightning.data.synthetic OUT`: write the synthetic BreaKHis from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from masf_lightning.data.synthetic.dataset import _MAGNIFICATIONS, _TYPES
from masf_lightning.data.synthetic.writer import MARKER_NAME, generate_synthetic_breakhis


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m masf_lightning.data.synthetic",
        description="Write the procedural synthetic BreaKHis (official layout) under OUT/BreaKHis_v1.",
    )
    parser.add_argument("out", help="folder that will hold BreaKHis_v1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patients-per-type", type=int, default=4)
    parser.add_argument("--images-per-magnification", type=int, default=10)
    parser.add_argument("--size", default="175x115", help="WIDTHxHEIGHT, at most 700x460 (default 175x115)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 175x115, got {args.size!r}")
    from masf_lightning.errors import MasfError

    start = time.perf_counter()
    existed = (Path(args.out) / MARKER_NAME).exists()
    try:
        out = generate_synthetic_breakhis(
            args.out,
            seed=args.seed,
            patients_per_type=args.patients_per_type,
            images_per_magnification=args.images_per_magnification,
            size=(w, h),
            progress=not args.no_progress,
        )
    except MasfError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    n = len(list((out / "BreaKHis_v1").rglob("*.png")))
    verb = "already present" if existed else f"wrote in {time.perf_counter() - start:.1f} s"
    print(
        f"{out / 'BreaKHis_v1'}: {n} images ({len(_TYPES)} types x {args.patients_per_type} patients x "
        f"{len(_MAGNIFICATIONS)} magnifications x {args.images_per_magnification}), {w}x{h} px, {verb}"
    )
    return 0
