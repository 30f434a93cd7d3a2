"""experiments/loss_balance.py reads MASF's gradient-norm scalars, dropping the repeats old runs logged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import loss_balance  # noqa: E402


def test_ratios_from_fresh_steps_only(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    with SummaryWriter(str(run / "tb")) as w:
        # computed at steps 200 and 250; each value re-flushed at the next step too (the old repeat)
        for step, cr, gen, tri, d in [(200, 2.0, 0.2, 1.0, 5.0), (210, 2.0, 0.2, 1.0, 5.0), (250, 4.0, 0.8, 4.0, 7.0), (260, 4.0, 0.8, 4.0, 7.0)]:
            for tag, v in zip(loss_balance.TAGS, (cr, gen, tri, d), strict=True):
                w.add_scalar(tag, v, step)
            w.add_scalar("train/cr", step / 100, step)
    (run / "metrics.json").write_text(json.dumps({"source_val_acc": 0.75, "source_test_acc": 0.5, "target_test_acc": 0.25}))
    assert loss_balance.main([str(run)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    # two fresh steps: gen ratios 0.1, 0.2 → median 0.15; tri ratios 0.5, 1.0 → 0.75; d² medians 6;
    # L_cr late = mean of every train/cr value logged (2.0, 2.1, 2.5, 2.6) = 2.30
    assert "| 2 | 0.150 (max 0.20) | 0.750 (max 1.00) | 6 (max 7) | 2.30 | 75.0 | 50.0 | 25.0 |" in line
