"""predict, embed and search on one tiny trained run; checkpoints read without running code (issue 19)."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch

from masf_lightning import embed, predict
from masf_lightning.checkpoints import SafeCheckpointIO, load_checkpoint
from masf_lightning.errors import DataError
from masf_lightning.eval.embeddings import collect
from masf_lightning.inference import Skipped, open_run, preprocess
from masf_lightning.search import __main__ as search
from masf_lightning.search.index import build_index, load_index
from masf_lightning.search.index import search as search_index
from tests.test_train_e2e import run_train, tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny MASF run, target 400x, and its synthetic data (192 PNGs named as BreaKHis)."""
    tmp = tmp_path_factory.mktemp("use")
    out = tmp / "run"
    proc = run_train([*tiny_overrides(tmp / "data"), f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def own(run_dir: Path) -> dict:
    """The run's own evaluation of its target-test images (the pipeline's data, cache and `collect`)."""
    from masf_lightning.runs import load_run

    run = load_run(run_dir, device="cpu")
    out = collect(run.module, run.dm, "400x", "test")
    rows = out["rows"][:5]
    paths = [run.dm.root / p for p in run.dm.index["path"].iloc[rows.numpy()]]
    return {**out, "paths": paths, "cache": run.dm.cached.images[rows], "root": run.dm.root, "classes": run.dm.class_names}


@pytest.fixture(scope="module")
def emb_file(run_dir: Path, own: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("emb") / "archive.parquet"
    assert embed.main([str(run_dir), str(own["root"]), "--out", str(path), "--device", "cpu"]) == 0
    return path


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_predict_gives_the_runs_own_logits(run_dir: Path, own: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = open_run(run_dir, "cpu")
    good, images = preprocess(model, own["paths"], Skipped())
    assert torch.equal(images, own["cache"]), "new images must be preprocessed exactly as the training cache was"
    table, logits = predict.predict(model, own["paths"], Skipped())
    # Bit-identical on this CPU; 1e-5 allows a CPU whose conv kernels sum in another order for a batch of 5
    # images than for the evaluation's batch of all 16 target-test images.
    torch.testing.assert_close(logits, own["logits"][:5], atol=1e-5, rtol=1e-5)

    out = tmp_path / "preds.csv"
    assert predict.main([str(run_dir), *map(str, own["paths"]), "--out", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"5 image(s) → {out}")
    csv = pd.read_csv(out)
    assert list(csv.columns) == ["path", "pred", "confidence", *(f"p_{c}" for c in own["classes"])]
    probs = csv[[f"p_{c}" for c in own["classes"]]].to_numpy()
    assert abs(probs.sum(1) - 1).max() < 1e-9
    assert list(csv["pred"]) == [own["classes"][i] for i in own["logits"][:5].argmax(1)]
    assert (csv["confidence"] == probs.max(1)).all()
    # a run folder without its training data (sent elsewhere) predicts the same
    elsewhere = tmp_path / "elsewhere.csv"
    assert predict.main([str(run_dir), *map(str, own["paths"]), "--out", str(elsewhere), "--device", "cpu", "--set", f"data.root={tmp_path / 'no-data'}"]) == 0
    assert pd.read_csv(elsewhere).equals(csv)


def test_embed_writes_vectors_and_what_the_runs_table_says(run_dir: Path, own: dict, emb_file: Path, tmp_path: Path) -> None:
    info, table, vectors = embed.read_embeddings(emb_file)
    assert len(table) == 192 and info["model_id"] == open_run(run_dir, "cpu").id and info["method"] == "masf"
    assert set(vectors) == {"features", "embeddings"} and vectors["features"].shape == (192, 16)
    row = table.set_index("path").loc[str(own["paths"][0].resolve())]
    name = own["paths"][0].name  # SOB_<B|M>_<TYPE>-<patient>-400-<seq>.png
    # from the run's own table (split_manifest.csv), by path: its domain, patient and class under the run's task
    assert row["domain"] == "400x" and row["label"] == name.split("_")[2].split("-")[0] and row["patient"] in name

    renamed = tmp_path / "my scan.png"
    shutil.copy(own["paths"][0], renamed)
    out = tmp_path / "one.parquet"
    assert embed.main([str(run_dir), str(renamed), "--out", str(out), "--device", "cpu"]) == 0
    _, t, v = embed.read_embeddings(out)
    assert t.loc[0, ["domain", "patient", "label"]].isna().all()  # not in the run's table, no BreaKHis name
    i = table.index[table["path"] == str(own["paths"][0].resolve())][0]
    torch.testing.assert_close(torch.from_numpy(v["embeddings"][0]), torch.from_numpy(vectors["embeddings"][i]))
    torch.testing.assert_close(torch.from_numpy(vectors["features"][i]), own["features"][0], atol=1e-5, rtol=1e-5)


class Page(HTMLParser):
    """Each query section's figures: their class attribute (css), data-* attributes and img src."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[list[dict]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("class") == "query":
            self.sections.append([])
        elif tag == "figure":
            self.sections[-1].append({"css": a["class"], **{k[5:]: v for k, v in a.items() if k.startswith("data-")}, "src": None})
        elif tag == "img":
            self.sections[-1][-1]["src"] = a["src"]


def test_search_index_and_query_write_csv_and_page(run_dir: Path, own: dict, emb_file: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    assert search.main(["index", str(emb_file), "--out", str(index)]) == 0
    assert json.loads((index / "index.json").read_text())["kind"] == "flat"
    queries = [str(p) for p in own["paths"][:3]]
    for exclude in (False, True):
        out = tmp_path / f"results-{exclude}"
        assert search.main(["query", str(index), *queries, "-k", "4", "--out", str(out), "--device", "cpu", *(["--exclude-same-patient"] if exclude else [])]) == 0
        csv = pd.read_csv(out / "results.csv")
        assert len(csv) == 12 and list(csv["rank"]) == [1, 2, 3, 4] * 3
        page = Page()
        page.feed((out / "results.html").read_text())
        assert len(page.sections) == 3
        for q, figures in zip(queries, page.sections, strict=True):
            assert figures[0]["css"] == "query-image" and figures[0]["path"] == str(Path(q).resolve())
            hits = figures[1:]
            assert len(hits) == 4 and all(f["src"].startswith("data:image/jpeg;base64,") for f in figures)
            assert all({"rank", "distance", "class", "domain", "patient"} <= set(f) for f in hits)
            distances = [float(f["distance"]) for f in hits]
            assert distances == sorted(distances)
            own_patient = pd.read_parquet(index / "archive.parquet").set_index("path").loc[str(Path(q).resolve()), "patient"]
            if exclude:  # the query's own patient (and so the query itself, which is in the archive) never comes back
                assert all(f["patient"] != own_patient for f in hits)
            else:
                assert hits[0]["path"] == str(Path(q).resolve()) and distances[0] < 1e-3


def test_approximate_index_agrees_with_the_exact_one(emb_file: Path, tmp_path: Path) -> None:
    exact, approx = build_index([emb_file]), build_index([emb_file], kind="hnsw")
    _, _, vectors = embed.read_embeddings(emb_file)
    q = vectors["embeddings"][::8]
    (a, _), (b, _) = search_index(exact, q, 10), search_index(approx, q, 10)
    recall = sum(len(set(x) & set(y)) for x, y in zip(a, b, strict=True)) / (10 * len(q))
    assert recall >= 0.95, recall
    assert search.main(["index", str(emb_file), "--out", str(tmp_path / "hnsw"), "--kind", "hnsw"]) == 0
    assert load_index(tmp_path / "hnsw").info["kind"] == "hnsw"


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle's protocol
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(run_dir: Path, own: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "sent"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("tb"))
    marker = tmp_path / "marker"
    selected = run / json.loads((run / "metrics.json").read_text())["selected_checkpoint"]
    torch.save({"state_dict": {}, "global_step": Evil(marker)}, selected)
    torch.save({"global_step": Evil(marker)}, run / "checkpoints" / "last.ckpt")

    assert predict.main([str(run), str(own["paths"][0]), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"error: {selected}: refused, loading it would call ") and "system" in err[0]
    from masf_lightning.reevaluate import reevaluate
    from masf_lightning.run_folder import resume_step

    for load in (lambda: resume_step(run / "checkpoints" / "last.ckpt"), lambda: reevaluate(run, device="cpu"), lambda: SafeCheckpointIO().load_checkpoint(selected)):
        with pytest.raises(DataError, match="refused"):
            load()
    assert not marker.exists() and not (tmp_path / "p.csv").exists()
    torch.load(selected, weights_only=False)  # what the refusal prevents: unpickling runs the command
    assert marker.exists()


def test_bad_inputs_one_line_each_the_others_processed(run_dir: Path, own: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truncated, text, empty, absent = tmp_path / "cut.png", tmp_path / "notes.txt", tmp_path / "empty", tmp_path / "absent.png"
    truncated.write_bytes(own["paths"][0].read_bytes()[:200])
    text.write_text("not an image\n")
    empty.mkdir()
    good = [str(p) for p in own["paths"][:2]]
    out = tmp_path / "p.csv"
    args = [str(run_dir), good[0], str(truncated), str(text), str(empty), str(absent), good[1], "--out", str(out), "--device", "cpu"]
    assert predict.main(args) == 0
    err = _errors(capsys.readouterr().err)
    assert err[:4] == [
        f"skipped: {empty}: no image files (.png, .jpg, .jpeg, .webp) in this folder",
        f"skipped: {absent}: no such file or folder",
        *err[2:4],
    ] and err[2].startswith(f"skipped: {truncated}: corrupt or truncated image") and err[3] == f"skipped: {text}: not an image file (PNG, JPEG, WEBP or GIF)"
    assert err[4:] == [f"skipped 4 input(s): {empty}, {absent}, {truncated}, {text}"]
    assert list(pd.read_csv(out)["path"]) == good

    out.unlink()
    assert predict.main([*args, "--strict"]) == 2
    assert _errors(capsys.readouterr().err)[-1] == "error: 4 input(s) skipped under --strict; nothing written" and not out.exists()
    assert predict.main([str(run_dir), str(truncated), str(empty), "--out", str(out), "--device", "cpu"]) == 2
    assert _errors(capsys.readouterr().err)[-1] == "error: no image was processed; nothing written" and not out.exists()


def test_run_dir_without_checkpoint_is_one_line(run_dir: Path, own: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "run_config.json", bare)
    assert embed.main([str(bare), str(own["paths"][0]), "--out", str(tmp_path / "e.parquet")]) == 2
    assert _errors(capsys.readouterr().err) == [f"error: {bare} has no selected checkpoint and no checkpoints/last.ckpt: train it first"]


def test_an_index_of_another_runs_model_is_refused(run_dir: Path, own: dict, emb_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = tmp_path / "index"
    assert search.main(["index", str(emb_file), "--out", str(index)]) == 0
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("tb"))
    selected = other / json.loads((other / "metrics.json").read_text())["selected_checkpoint"]
    state = load_checkpoint(selected)
    name = next(iter(state["state_dict"]))
    state["state_dict"][name] = state["state_dict"][name] + 0.01  # as if trained on
    torch.save(state, selected)
    capsys.readouterr()
    assert search.main(["query", str(index), str(own["paths"][0]), "--run", str(other), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"error: {index} was built with another model") and str(other) in err[0]
    assert not (tmp_path / "r").exists()


def test_resume_reads_last_ckpt_through_the_safe_reader(tmp_path: Path) -> None:
    """trainer.fit(ckpt_path=last.ckpt) loads through Lightning's CheckpointIO: ours, weights_only=True."""
    from masf_lightning.pipeline import build_trainer
    from tests.test_reliability import compose_config

    cfg = compose_config([*tiny_overrides(tmp_path / "data"), f"hydra.run.dir={tmp_path / 'run'}"])
    trainer, _, _ = build_trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
