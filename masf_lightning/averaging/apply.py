"""After training: the averaged weights into the model, BatchNorm statistics recomputed for them, averaged.ckpt.

The run's online result (its selected checkpoint, as with averaging=none) is measured first, so metrics.json
shows what averaging changed for the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

from masf_lightning.averaging.callbacks import Averager, trained
from masf_lightning.data.datamodule import MagnificationDataModule
from masf_lightning.eval.embeddings import collect
from masf_lightning.io import atomic_path

AVERAGED_CHECKPOINT = "checkpoints/averaged.ckpt"  # relative to the run folder; metrics.json's selected_checkpoint


def batchnorms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(module: torch.nn.Module, dm: MagnificationDataModule, batches: int) -> int:
    """Running statistics of every BatchNorm recomputed on `batches` source training batches (SWAD's code:
    `swa_utils.update_bn`, an equal-weight average over the batches); returns how many were used (0: no BatchNorm,
    e.g. the small CNN's GroupNorm or a ViT's LayerNorm, nothing to do)."""
    norms = batchnorms(module)
    if not norms or batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    was_training = module.training
    module.train()
    stream = iter(dm.train_dataloader())  # episodes after the last training step: fresh, deterministic
    device = next(module.parameters()).device
    for _ in range(batches):
        batch = dm.on_after_batch_transfer(move_data_to_device(next(stream), device), 0)
        module(torch.cat([x for x, _ in batch["domains"].values()]))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.train(was_training)
    return batches


def target_test_acc(module: torch.nn.Module, dm: MagnificationDataModule) -> float:
    """Accuracy on the target's test split (the headline number) of the weights the module holds now."""
    module.eval()
    got = collect(module, dm, dm.target, "test", next(module.parameters()).device)
    return float((got["logits"].argmax(1) == got["labels"]).float().mean())


def install_average(module: torch.nn.Module, dm: MagnificationDataModule, averager: Averager, run_dir: Path, online_step: int) -> dict[str, Any]:
    """Measure the online model, put the average in its place, recompute BatchNorm, write averaged.ckpt; the
    metrics.json fields that say so."""
    online = target_test_acc(module, dm)
    weights, window = averager.averaged()
    with torch.no_grad():
        for p, w in zip(trained(module), weights, strict=True):
            p.copy_(w.to(p.device, p.dtype))
    config = averager.config()
    window["bn_batches"] = recompute_batchnorm(module, dm, int(config.get("bn_batches", 0)))
    if window.get("note"):
        print(f"note: {window['note']}")
    with atomic_path(run_dir / AVERAGED_CHECKPOINT) as tmp:
        torch.save({"state_dict": module.state_dict(), "global_step": window["last_step"], "averaging": config, "window": window}, tmp)
    return {
        "averaging": config,
        "averaging_window": window,
        "online_target_test_acc": online,  # the same run without averaging: its selected checkpoint's online weights
        "online_selected_step": online_step,
        "selected_step": window["last_step"],
        "selected_checkpoint": AVERAGED_CHECKPOINT,
    }
