"""Classify new images with a trained run.

    python -m masf_lightning.predict RUN_DIR IMAGE_OR_FOLDER... --out preds.csv [--device cpu] [--strict]

One CSV row per image: `path`, the predicted class `pred`, its probability `confidence` and `p_<class>` for
every class of the run's task (softmax of the logits; they sum to 1). The images get exactly the run's
preprocessing (its stain normalizer and reference statistics, geometry, centre crop, mean/std) and its
selected checkpoint, read with weights_only=True. Unreadable inputs are skipped with one line each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from masf_lightning.inference import (
    Skipped,
    TrainedModel,
    add_arguments,
    cli,
    open_inputs,
    refuse_output,
    run_images,
)
from masf_lightning.io import write_text_atomic


def predict(model: TrainedModel, paths: Sequence[Path], skipped: Skipped, batch_size: int = 64) -> tuple[pd.DataFrame, torch.Tensor]:
    """The prediction table and the logits (N×classes, float32) of every readable image, in input order."""
    names = model.class_names
    rows: list[dict[str, object]] = []
    logits: list[torch.Tensor] = []
    for batch in run_images(model, paths, skipped, batch_size):
        probs = torch.softmax(batch.logits.double(), dim=1)  # float64: the written probabilities sum to 1 to ~1e-15
        for path, p in zip(batch.paths, probs, strict=True):
            best = int(p.argmax())
            rows.append({"path": str(path), "pred": names[best], "confidence": float(p[best]), **{f"p_{c}": float(v) for c, v in zip(names, p, strict=True)}})
        logits.append(batch.logits)
    columns = ["path", "pred", "confidence", *(f"p_{c}" for c in names)]
    return pd.DataFrame(rows, columns=columns), torch.cat(logits) if logits else torch.empty(0, len(names))


def _main(args: argparse.Namespace) -> int:
    model, images, skipped = open_inputs(args)
    table, _ = predict(model, images, skipped, args.batch_size)
    if (code := refuse_output(len(table), skipped, args.strict)) is not None:
        return code
    write_text_atomic(args.out, table.to_csv(index=False))
    print(f"{len(table)} image(s) → {args.out} ({model.run.cfg.task}: {', '.join(model.class_names)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m masf_lightning.predict", description="Classify images with a trained run; one CSV row per image.")
    add_arguments(parser, "the CSV to write (path, pred, confidence, p_<class>...)")
    return cli(_main, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
