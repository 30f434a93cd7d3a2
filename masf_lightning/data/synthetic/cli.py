"""`python -m masf_lightning.data.synthetic OUT`: write the synthetic BreaKHis from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from masf_lightning.data.synthetic.dataset import _MAGNIFICATIONS, _TYPES
from masf_lightning.data.synthetic.writer import MARKER_NAME, generate_synthetic_breakhis
from masf_lightning.errors import ConfigError, MasfError

# The defaults are the ones `python train.py` asks for, so the CLI's tree is the tree training accepts.
CONFIG = Path(__file__).resolve().parents[3] / "conf" / "data" / "synthetic.yaml"
KEYS = ("seed", "patients_per_type", "images_per_magnification", "size")


def config_defaults(path: Path = CONFIG) -> dict[str, Any]:
    """The `synthetic:` block of conf/data/synthetic.yaml: seed, patients_per_type, images_per_magnification, size."""
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: the CLI takes its defaults from it; run from a checkout of the project"
        )
    block = OmegaConf.to_container(OmegaConf.load(path).get("synthetic") or {})
    missing = [k for k in KEYS if k not in block]
    if missing:
        raise ConfigError(f"{path}: the synthetic: block lacks {', '.join(missing)}")
    return {k: block[k] for k in KEYS}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        defaults = config_defaults()
    except MasfError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    parser = argparse.ArgumentParser(
        prog="python -m masf_lightning.data.synthetic",
        description="Write the procedural synthetic BreaKHis (official layout) under OUT/BreaKHis_v1. "
        "Defaults: conf/data/synthetic.yaml, the data `python train.py` expects.",
    )
    parser.add_argument("out", help="folder that will hold BreaKHis_v1")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="(default %(default)s)")
    parser.add_argument(
        "--patients-per-type", type=int, default=defaults["patients_per_type"], help="(default %(default)s)"
    )
    parser.add_argument(
        "--images-per-magnification",
        type=int,
        default=defaults["images_per_magnification"],
        help="(default %(default)s)",
    )
    size = "x".join(str(v) for v in defaults["size"])
    parser.add_argument("--size", default=size, help=f"WIDTHxHEIGHT, at most 700x460 (default {size})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 175x115, got {args.size!r}")

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
