"""DDP on CPU (2 processes, gloo) makes the same first MASF update as one process on the same global batch."""

from __future__ import annotations

from pathlib import Path

import torch

from masf_lightning.checkpoints import load_checkpoint
from tests.test_train_e2e import run_train, tiny_overrides


def first_update(tmp_path: Path, trainer: str) -> dict[str, torch.Tensor]:
    run_dir = tmp_path / trainer
    proc = run_train(
        [
            *tiny_overrides(tmp_path / "data"),
            f"trainer={trainer}",
            "trainer.precision=64-true",  # compare at float64 so Adam's sign-like first step is not noise
            "backbone.dropout=0.0",  # dropout masks are per process by nature
            "data.batch_size_per_domain=12",  # 6 per rank; the triplet third (2 per rank) composes exactly
            "steps=1",
            "val_every=1",
            "selection=last",
            "hparams.inner_lr=0.5",  # large α so the second-order term matters
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 1
    return state["state_dict"]


def test_ddp_cpu_first_masf_update_matches_single_process(tmp_path: Path) -> None:
    single = first_update(tmp_path, "cpu")
    ddp = first_update(tmp_path, "ddp_cpu")
    assert single.keys() == ddp.keys()
    for k in single:
        # Adam's first step is ≈ lr·g/(|g|+ε): where the exact gradient is 0 (the last embedder bias: squared
        # distances ignore a shared shift) float64 round-off of ~1e-17 becomes ~1e-12 in the weights; a wrong
        # reduction moves them by ~lr = 1e-3.
        assert torch.allclose(single[k], ddp[k], rtol=0, atol=1e-9), k
