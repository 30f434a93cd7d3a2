#!/usr/bin/env python
"""Using a trained model at scale: embedding throughput (images/s, the `embed` path end to end) and archive search.

    python experiments/bench_search.py                          # small and alexnet embedding, 100,000 × 1,000 search
    python experiments/bench_search.py --archive 20000 --json bench_search.json
    python experiments/bench.py --search-only                   # the same, as part of `make bench`'s report

Embedding: 700×460 synthetic PNGs through `masf_lightning.embed.embed` (decode, Reinhard, geometry, crop,
normalize, F_ψ and F_φ) with MASF's networks at random weights (the cost does not depend on the values),
after one warm-up batch; preprocessing alone is timed on the same files for the split, batch by batch as
`embed` does it and in one call over all files as the training cache is built.
Search: a Gaussian mixture standing in for an archive of F_φ embeddings (256-d; 8 classes × 100 patients,
each image its patient's centre plus noise; queries drawn the same way), through `search.index.search`:
the exact flat index against HNSW, and recall@k of HNSW against the exact neighbours.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {"small": [], "alexnet": ["backbone=alexnet", "backbone.weights=null"]}


def fake_run(folder: Path, overrides: list[str]) -> Path:
    """A run folder as training leaves it (run_config.json, checkpoints/last.ckpt) for untrained weights."""
    from hydra import compose, initialize_config_dir

    import masf_lightning.config  # noqa: F401 - registers the hparams registry, as train.py does
    from masf_lightning.pipeline import build_module

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.data={folder / 'data'}", "progress=false", *overrides])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "run_config.json").write_text(json.dumps(resolved))
    module = build_module(OmegaConf.create(resolved), num_classes=8)
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, folder / "checkpoints" / "last.ckpt")
    return folder


def bench_embedding(images: int, batch: int, backbones: list[str]) -> dict[str, Any]:
    from masf_lightning.data.cache import preprocess_images
    from masf_lightning.data.synthetic import generate_synthetic_breakhis
    from masf_lightning.embed import embed
    from masf_lightning.inference import Skipped, open_run, preprocess

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_synthetic_breakhis(Path(tmp) / "syn", patients_per_type=1, images_per_magnification=max(1, images // 32), size=(700, 460), progress=False)
        paths = sorted(Path(root).rglob("*.png"))
        for name in backbones:
            model = open_run(fake_run(Path(tmp) / name, BACKBONES[name]), "cpu")
            embed(model, paths[:batch], Skipped(), batch)  # warm-up: kernels, allocator
            t = time.perf_counter()
            table, vectors = embed(model, paths, Skipped(), batch)
            total = time.perf_counter() - t
            t = time.perf_counter()
            for start in range(0, len(paths), batch):
                preprocess(model, paths[start : start + batch], Skipped())
            pre = time.perf_counter() - t
            dm = model.run.dm
            t = time.perf_counter()  # as the training cache is built: every file in one call
            preprocess_images(paths, dm.stain, dm.geometry, num_workers=dm.num_workers, progress=False)
            cache_way = time.perf_counter() - t
            out[name] = {
                "images": len(table), "batch": batch, "seconds": total, "images_per_s": len(table) / total,
                "preprocess_images_per_s": len(paths) / pre, "preprocess_share": pre / total,
                "cache_build_images_per_s": len(paths) / cache_way,
                "input_size": int(model.run.dm.input_size), "dims": {k: int(v.shape[1]) for k, v in vectors.items()},
            }  # fmt: skip
    return out


def mixture(n: int, dim: int, classes: int, patients: int, rng: np.random.Generator, centres: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """n vectors: a random patient's centre (its class centre + spread) plus per-image noise; and their patient ids."""
    class_centres, patient_offsets = centres
    patient = rng.integers(0, classes * patients, n)
    x = class_centres[patient // patients] + patient_offsets[patient] + rng.normal(0, 0.5, (n, dim))
    return x.astype(np.float32), patient


def bench_search(archive: int, queries: int, k: int, dim: int = 256, seed: int = 0) -> dict[str, Any]:
    from masf_lightning.search.index import HNSW_EF_SEARCH, ArchiveIndex, build, search

    rng = np.random.default_rng(seed)
    classes, patients = 8, 100
    centres = (rng.normal(0, 1, (classes, dim)), rng.normal(0, 0.5, (classes * patients, dim)))
    x, pid = mixture(archive, dim, classes, patients, rng, centres)
    q, qid = mixture(queries, dim, classes, patients, rng, centres)
    table = pd.DataFrame({"path": [f"a{i}.png" for i in range(archive)], "patient": [f"p{p}" for p in pid]})
    own = [f"p{p}" for p in qid]
    out: dict[str, Any] = {"archive": archive, "queries": queries, "k": k, "dim": dim, "data": f"Gaussian mixture, {classes} classes x {patients} patients"}
    indexes: dict[str, tuple[ArchiveIndex, float]] = {}
    for kind, ef in (("flat", None), ("hnsw", HNSW_EF_SEARCH), ("hnsw", 4 * HNSW_EF_SEARCH)):
        key = kind if ef is None else f"{kind}_ef{ef}"
        if kind not in indexes:
            t = time.perf_counter()
            indexes[kind] = (ArchiveIndex(build(x, kind), table, {}), time.perf_counter() - t)
        index, build_s = indexes[kind]
        search(index, q[:10], k, ef_search=ef or HNSW_EF_SEARCH)  # warm-up
        t = time.perf_counter()
        rows, _ = search(index, q, k, ef_search=ef or HNSW_EF_SEARCH)
        plain = time.perf_counter() - t
        t = time.perf_counter()
        search(index, q, k, own, ef_search=ef or HNSW_EF_SEARCH)
        excluding = time.perf_counter() - t
        out[key] = {"build_s": build_s, "search_s": plain, "ms_per_query": 1000 * plain / queries, "exclude_same_patient_s": excluding}
        if kind == "flat":
            exact = rows
        else:
            out[key]["recall_at_k"] = sum(len(set(a) & set(b)) for a, b in zip(exact, rows, strict=True)) / (k * queries)
    return out


def print_search_report(report: dict[str, Any]) -> None:
    for name, e in report.get("embedding", {}).items():
        print(f"embed {name:8} {e['images_per_s']:7.1f} images/s end to end ({e['images']} PNGs 700×460 → {e['input_size']} px, batch {e['batch']}; "
              f"preprocessing alone {e['preprocess_images_per_s']:.1f} images/s, {100 * e['preprocess_share']:.0f} % of the time; "
              f"the cache build's call on all files {e['cache_build_images_per_s']:.1f} images/s)")
    s = report.get("search")
    if s:
        print(f"search {s['archive']:,} × {s['dim']}-d archive vectors, {s['queries']:,} queries, k = {s['k']} ({s['data']}):")
        for key in ("flat", *(k for k in s if k.startswith("hnsw"))):
            e = s[key]
            recall = f", recall@{s['k']} {e['recall_at_k']:.3f}" if "recall_at_k" in e else ""
            print(f"  {key:10} build {e['build_s']:6.1f} s  search {e['search_s']:6.2f} s ({e['ms_per_query']:.2f} ms/query), "
                  f"excluding the query's patient {e['exclude_same_patient_s']:.2f} s{recall}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embed-images", type=int, default=128, help="700×460 PNGs to embed (multiple of 32)")
    ap.add_argument("--embed-batch", type=int, default=64)
    ap.add_argument("--backbones", default="small,alexnet")
    ap.add_argument("--archive", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report = run(args)
    print_search_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The two measurements with `args` (embed_images, embed_batch, backbones, archive, queries, k): bench.py calls this."""
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    return {"embedding": bench_embedding(args.embed_images, args.embed_batch, backbones), "search": bench_search(args.archive, args.queries, args.k)}


if __name__ == "__main__":
    main()
