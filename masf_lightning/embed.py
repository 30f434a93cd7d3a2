"""Embed new images with a trained run: F_ψ features and, for methods that train one, F_φ embeddings.

    python -m masf_lightning.embed RUN_DIR IMAGE_OR_FOLDER... --out emb.parquet [--device cpu] [--strict]

One Parquet row per image: `path` (absolute), the BreaKHis fields its file name carries (`malignancy`,
`tumor_type`, `patient`, `magnification`, `seq`; null for other names), `features` and, when the run
has F_φ (MASF, its ablations), `embeddings`, as fixed-size float32 lists. The file's metadata (key
"masf") names the run, its checkpoint and a fingerprint of the weights, so `search` can refuse to mix
vectors of two models. Same preprocessing and skipping of bad inputs as predict.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from masf_lightning.errors import DataError
from masf_lightning.inference import (
    METADATA_COLUMNS,
    Skipped,
    TrainedModel,
    add_arguments,
    cli,
    open_inputs,
    refuse_output,
    run_images,
)  # fmt: skip
from masf_lightning.io import atomic_path

FORMAT = 1
SPACES = ("embeddings", "features")  # search's preference: F_φ's space (the one Eq. 8 shapes) when there is one


def model_info(model: TrainedModel) -> dict[str, Any]:
    """What identifies the vectors' model, stored with them."""
    cfg = model.run.cfg
    return {
        "format": FORMAT,
        "run_dir": str(model.run_dir.resolve()),
        "checkpoint": str(model.run.checkpoint.resolve()),
        "step": model.run.step,
        "model_id": model.id,
        "method": cfg.method.name,
        "task": cfg.task,
        "target": cfg.target,
        "seed": int(cfg.seed),
    }


def embed(model: TrainedModel, paths: Sequence[Path], skipped: Skipped, batch_size: int = 64) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Per readable image its path, domain, patient and class (when known), and the vectors of each space (N×D float32)."""
    rows: list[dict[str, Any]] = []
    vectors: dict[str, list[np.ndarray]] = {"features": [], "embeddings": []}
    for batch in run_images(model, paths, skipped, batch_size):
        rows += [{"path": str(p.resolve()), **model.metadata(p)} for p in batch.paths]
        vectors["features"].append(batch.features.numpy())
        if batch.embeddings is not None:
            vectors["embeddings"].append(batch.embeddings.numpy())
    table = pd.DataFrame(rows, columns=["path", *METADATA_COLUMNS])
    return table, {k: np.concatenate(v).astype(np.float32) for k, v in vectors.items() if v}


def write_embeddings(path: Path, table: pd.DataFrame, vectors: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    columns: dict[str, pa.Array] = {
        "path": pa.array(table["path"], pa.string()),
        **{c: pa.array(table[c].tolist(), pa.string()) for c in METADATA_COLUMNS},
    }
    for space, v in vectors.items():
        columns[space] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), pa.float32()), v.shape[1])
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta = {**info, "created": created, "dims": {k: int(v.shape[1]) for k, v in vectors.items()}}
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns).replace_schema_metadata({"masf": json.dumps(meta)}), tmp)


def read_embeddings(path: Path) -> tuple[dict[str, Any], pd.DataFrame, dict[str, np.ndarray]]:
    """(the model info, the path + metadata table, the vectors per space) of a file `embed` wrote."""
    try:
        table = pq.read_table(path)
        info = json.loads((table.schema.metadata or {})[b"masf"])
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not an embeddings file written by `python -m masf_lightning.embed` ({type(exc).__name__})") from None
    vectors = {}
    for space in SPACES:
        if space in table.column_names:
            col = table.column(space).combine_chunks()
            vectors[space] = np.array(col.flatten(), dtype=np.float32).reshape(len(col), -1)  # a copy: writable
    return info, table.select(["path", *METADATA_COLUMNS]).to_pandas(), vectors


def _main(args: argparse.Namespace) -> int:
    model, images, skipped = open_inputs(args)
    table, vectors = embed(model, images, skipped, args.batch_size)
    if (code := refuse_output(len(table), skipped, args.strict)) is not None:
        return code
    write_embeddings(args.out, table, vectors, model_info(model))
    dims = ", ".join(f"{k} {v.shape[1]}-d" for k, v in vectors.items())
    print(f"{len(table)} image(s) → {args.out} ({dims}; model {model.id})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m masf_lightning.embed", description="Embed images with a trained run into a Parquet file.")
    add_arguments(parser, "the Parquet file to write (path, BreaKHis fields, features, embeddings)")
    return cli(_main, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
