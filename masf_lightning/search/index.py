"""The archive index: FAISS over one space of `embed`'s vectors, beside the images' paths and BreaKHis fields.

An INDEX folder holds `index.faiss`, `archive.parquet` (row i of the index = row i of the table) and
`index.json` (the kind, the space, and the model the vectors came from: queries must come from it too).
Distances are Euclidean, as in the evaluation's search (eval/retrieval.py): FAISS returns their squares.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from masf_lightning.embed import SPACES, read_embeddings
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.io import atomic_path, write_json_atomic

INDEX_FILE, ARCHIVE_FILE, INFO_FILE = "index.faiss", "archive.parquet", "index.json"
# flat: exact (every archive vector compared); hnsw: approximate graph search for large archives (Malkov & Yashunin 2018)
KINDS = ("flat", "hnsw")
HNSW_M = 32  # graph degree: FAISS's usual choice for recall ≥ 0.95 at these dimensions
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64  # candidates kept per query; raised to the number of neighbours asked for


@dataclass
class ArchiveIndex:
    index: faiss.Index
    archive: pd.DataFrame
    info: dict[str, Any]


def build(vectors: np.ndarray, kind: str = "flat", hnsw_m: int = HNSW_M) -> faiss.Index:
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind}: use one of {', '.join(KINDS)}")
    if kind == "flat":
        index = faiss.IndexFlatL2(vectors.shape[1])
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], hnsw_m)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def build_index(sources: Sequence[Path], space: str | None = None, kind: str = "flat", hnsw_m: int = HNSW_M) -> ArchiveIndex:
    """One index over the vectors of one or more embeddings files of the same model."""
    infos, tables, spaces = zip(*(read_embeddings(p) for p in sources), strict=True)
    ids = {i["model_id"] for i in infos}
    if len(ids) > 1:
        raise DataError(f"{', '.join(map(str, sources))} come from {len(ids)} different models ({', '.join(sorted(ids))}); embed the archive with one run")
    space = space or next(s for s in SPACES if all(s in v for v in spaces))
    lacking = [str(p) for p, v in zip(sources, spaces, strict=True) if space not in v]
    if lacking:
        raise DataError(f"{lacking[0]} holds no {space} (method {infos[0]['method']} has no F_φ); use --space features")
    vectors = np.concatenate([v[space] for v in spaces])
    archive = pd.concat(tables, ignore_index=True)
    info = {k: v for k, v in infos[0].items() if k not in ("created", "dims")}
    info.update(
        kind=kind, space=space, dim=int(vectors.shape[1]), count=len(archive), hnsw_m=hnsw_m if kind == "hnsw" else None,
        sources=[str(Path(p).resolve()) for p in sources], created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    return ArchiveIndex(build(vectors, kind, hnsw_m), archive, info)


def save_index(index: ArchiveIndex, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(index.index, str(tmp))
    with atomic_path(folder / ARCHIVE_FILE) as tmp:
        index.archive.to_parquet(tmp, index=False)
    write_json_atomic(folder / INFO_FILE, index.info)  # last: a folder with index.json is complete


def load_index(folder: Path) -> ArchiveIndex:
    if not (folder / INFO_FILE).is_file():
        raise DataError(f"{folder}: not an index folder (no {INFO_FILE}); build one with `python -m masf_lightning.search index EMB.parquet --out {folder}`")
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        index = faiss.read_index(str(folder / INDEX_FILE))
        archive = pd.read_parquet(folder / ARCHIVE_FILE)
    except Exception as exc:  # noqa: BLE001 - FAISS and Arrow raise their own types for a damaged file
        raise DataError(f"{folder}: damaged index ({type(exc).__name__}); build it again") from None
    if index.ntotal != len(archive) or index.ntotal != info.get("count"):
        raise DataError(f"{folder}: {INDEX_FILE} holds {index.ntotal} vectors, {ARCHIVE_FILE} {len(archive)} rows; build it again")
    return ArchiveIndex(index, archive, info)


def search(
    index: ArchiveIndex, queries: np.ndarray, k: int, query_patients: Sequence[str | None] | None = None, ef_search: int = HNSW_EF_SEARCH
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query its archive rows, nearest first, and their Euclidean distances.

    `query_patients` (--exclude-same-patient): a query's own patient's images are left out, and more
    neighbours are fetched to leave k others (an approximate index may need a second pass); None = that
    query's patient is unknown, nothing excluded for it.
    """
    n = index.index.ntotal
    k = min(k, n)
    patients = index.archive["patient"].to_numpy(dtype=object)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    own_images = index.archive["patient"].value_counts()
    extra = max((int(own_images.get(p, 0)) for p in query_patients or () if p is not None), default=0)
    want = min(n, k + extra)  # enough for k others in one pass, whichever of its own images come first
    while True:
        if isinstance(index.index, faiss.IndexHNSW):
            index.index.hnsw.efSearch = max(ef_search, want)
        squared, rows = index.index.search(q, want)
        out_rows, out_dist, short = [], [], False
        for i in range(len(q)):
            own = query_patients[i] if query_patients is not None else None
            keep = (rows[i] >= 0) & ((patients[np.maximum(rows[i], 0)] != own) if own is not None else True)
            r, d = rows[i][keep][:k], np.sqrt(np.maximum(squared[i][keep][:k], 0.0))
            short |= len(r) < k
            out_rows.append(r)
            out_dist.append(d)
        if not short or want >= n:
            return out_rows, out_dist
        want = min(n, 4 * want)
