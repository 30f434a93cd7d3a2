"""The search CLI: `index` (embeddings file → INDEX folder) and `query` (images → DIR/results.csv, DIR/results.html)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from masf_lightning.errors import DataError
from masf_lightning.inference import (
    METADATA_COLUMNS,
    Skipped,
    add_run_options,
    cli,
    gather_images,
    open_run,
    refuse_output,
    run_images,
)  # fmt: skip
from masf_lightning.io import check_writable_dir, write_text_atomic
from masf_lightning.search.index import (
    HNSW_EF_SEARCH,
    HNSW_M,
    KINDS,
    ArchiveIndex,
    build_index,
    load_index,
    save_index,
    search,
)
from masf_lightning.search.page import render_page

RESULTS_CSV, RESULTS_HTML = "results.csv", "results.html"


def _index(args: argparse.Namespace) -> int:
    check_writable_dir(args.out, "--out")
    index = build_index(args.embeddings, args.space, args.kind, args.hnsw_m)
    save_index(index, args.out)
    i = index.info
    print(f"{i['count']} archive image(s), {i['space']} {i['dim']}-d, {i['kind']} index → {args.out} (model {i['model_id']}, run {i['run_dir']})")
    return 0


def _model_for(index: ArchiveIndex, where: Path, args: argparse.Namespace) -> Any:
    """The run that embeds the queries: --run, else the one that built the index; refused if its weights differ."""
    run_dir = args.run or Path(index.info["run_dir"])
    if not run_dir.is_dir():
        raise DataError(f"{where} was built with the model of {run_dir}, which is not here; pass --run RUN_DIR (a copy of that run)")
    model = open_run(run_dir, args.device, args.overrides)
    if model.id != index.info["model_id"]:
        raise DataError(
            f"{where} was built with another model ({index.info['model_id']}, run {index.info['run_dir']}) than {run_dir}'s "
            f"({model.id}): its vectors cannot be compared; query with that run, or embed and index the archive with this one"
        )
    return model


def _query(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise DataError(f"-k {args.k}: ask for at least 1 neighbour")
    check_writable_dir(args.out, "--out")
    index = load_index(args.index)
    model = _model_for(index, args.index, args)
    skipped = Skipped()
    space = index.info["space"]
    paths, vectors = [], []
    for batch in run_images(model, gather_images(args.inputs, skipped), skipped, args.batch_size):
        paths += batch.paths
        vectors.append((batch.embeddings if space == "embeddings" else batch.features).numpy())
    if (code := refuse_output(len(paths), skipped, args.strict)) is not None:
        return code
    queries = [{"path": str(p.resolve()), **model.metadata(p)} for p in paths]
    patients = [q["patient"] for q in queries] if args.exclude_same_patient else None
    if patients is not None and (unknown := sum(p is None for p in patients)):
        print(f"note: {unknown} query image(s) have no known patient (not in the run's table, no BreaKHis name): nothing excluded for them", file=sys.stderr)
    rows, dists = search(index, np.concatenate(vectors), args.k, patients, args.ef_search)
    archive = index.archive.to_dict("records")
    hits = [[{"rank": r + 1, "distance": float(d), **archive[i]} for r, (i, d) in enumerate(zip(ri, di, strict=True))] for ri, di in zip(rows, dists, strict=True)]
    table = pd.DataFrame(
        [{"query": q["path"], **{f"query_{c}": q[c] for c in METADATA_COLUMNS}, **{c: h[c] for c in ("rank", "distance", "path", *METADATA_COLUMNS)}}
         for q, found in zip(queries, hits, strict=True) for h in found]
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / RESULTS_CSV, table.to_csv(index=False))
    write_text_atomic(args.out / RESULTS_HTML, render_page(index.info, queries, hits, args.k, args.exclude_same_patient))
    print(f"{len(queries)} query image(s), {args.k} nearest of {index.info['count']} → {args.out / RESULTS_CSV}, {args.out / RESULTS_HTML}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m masf_lightning.search", description="Search an archive of images with a trained run's embeddings.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("index", help="build an index from embeddings files (python -m masf_lightning.embed)")
    i.add_argument("embeddings", nargs="+", type=Path, metavar="EMB.parquet")
    i.add_argument("--out", type=Path, required=True, help="the index folder to write")
    i.add_argument("--space", choices=["embeddings", "features"], help="F_φ embeddings (default when present) or F_ψ features")
    i.add_argument("--kind", choices=KINDS, default="flat", help="flat: exact (default); hnsw: approximate, for large archives")
    i.add_argument("--hnsw-m", type=int, default=HNSW_M, help=f"hnsw graph degree (default {HNSW_M})")
    i.set_defaults(func=_index)
    q = sub.add_parser("query", help="find the k nearest archive images of each query image")
    q.add_argument("index", type=Path, metavar="INDEX")
    q.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    q.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    q.add_argument("--out", type=Path, required=True, help=f"folder for {RESULTS_CSV} and {RESULTS_HTML}")
    q.add_argument("--exclude-same-patient", action="store_true", help="leave out archive images of the query's own patient (from BreaKHis names)")
    q.add_argument("--run", type=Path, help="the run that embeds the queries (default: the one that built the index; must hold the same model)")
    q.add_argument("--ef-search", type=int, default=HNSW_EF_SEARCH, help=f"hnsw: candidates per query (default {HNSW_EF_SEARCH}; more = better recall)")
    add_run_options(q)
    q.set_defaults(func=_query)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli(lambda args: args.func(args), parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
