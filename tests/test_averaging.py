"""Weight averaging (masf_lightning/averaging): SWAD's window on a hand-made loss sequence, the averaged weights
against the mean of the recorded weights, a run killed inside the window, and train.py with averaging=swad/ema."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from masf_lightning.averaging import EMA, SWAD, SwadWindow, recompute_batchnorm
from masf_lightning.averaging.callbacks import LOSS_KEY
from masf_lightning.checkpoints import load_checkpoint
from masf_lightning.config.hparams import value
from tests.test_reliability import KILL_AFTER_CHECKS
from tests.test_train_e2e import ROOT, run_train, tiny_overrides

# Worked out by hand, n_converge=3, n_tolerance=2, tolerance_ratio=0.5:
# check:  0    1    2    3    4    5    6    7    8    9   10
# loss:  5.0  4.0  3.0  2.0  2.5  2.2  2.9  3.4  3.5  3.6  3.7
# checks 3,4,5: 2.0 is their first and lowest -> opens at check 5, window from segment 3;
# threshold = 1.5 * mean(2.0, 2.5, 2.2) = 3.35.
# segment 6: min(2.9, 3.4) = 2.9 <= 3.35 in; segment 7: min(3.4, 3.5) > 3.35 -> closes after segment 6 (at check 8).
HAND = [5.0, 4.0, 3.0, 2.0, 2.5, 2.2, 2.9, 3.4, 3.5, 3.6, 3.7]


def feed(window: SwadWindow, losses: list[float]) -> SwadWindow:
    for loss in losses:
        window.record(loss)
    return window


def test_window_opens_and_closes_where_worked_out_by_hand() -> None:
    w = feed(SwadWindow(3, 2, 0.5), HAND[:5])
    assert w.opened_at is None and w.decided() == [] and w.final() == ([2, 3, 4], False)  # fallback: the last 3
    w.record(HAND[5])
    assert (w.opened_at, w.start) == (5, 3) and abs(w.threshold - 3.35) < 1e-12
    assert w.decided() == [3, 4] and not w.closed  # 5 waits for check 6
    w.record(HAND[6])
    assert w.decided() == [3, 4, 5]
    w.record(HAND[7])
    assert w.decided() == [3, 4, 5, 6] and not w.closed
    w.record(HAND[8])
    assert w.closed and w.decided() == [3, 4, 5, 6]
    feed(w, HAND[9:])
    assert w.final() == ([3, 4, 5, 6], True), "later checks do not reopen a closed window"
    # training ends before the window closes: the tail is judged on the checks there are
    tail = feed(SwadWindow(3, 2, 0.5), HAND[:8])
    assert tail.final() == ([3, 4, 5, 6], True)
    assert feed(SwadWindow(3, 2, 0.5), HAND[:7]).final() == ([3, 4, 5, 6], True)


class Fake(SimpleNamespace):
    """The two things the callbacks read from a Trainer."""


def drive(callback: SWAD | EMA, net: torch.nn.Module, steps: int, val_every: int, losses: list[float], seed: int = 0) -> list[list[torch.Tensor]]:
    """`steps` random weight updates of `net` with a check every `val_every`; returns the weights after each step."""
    g = torch.Generator().manual_seed(seed)
    trainer = Fake(global_step=0, sanity_checking=False, callback_metrics={})
    callback.on_train_start(trainer, net)
    seen = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        trainer.global_step = step
        callback.on_train_batch_end(trainer, net, None, None, step - 1)
        seen.append([p.detach().clone() for p in net.parameters()])
        if step % val_every == 0:
            trainer.callback_metrics = {LOSS_KEY: torch.tensor(losses[step // val_every - 1])}
            callback.on_validation_end(trainer, net)
    return seen


def test_swad_average_is_the_mean_of_the_weights_over_the_window() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    swad = SWAD(3, 2, 0.5, bn_batches=0)
    seen = drive(swad, net, steps=len(HAND) * 5, val_every=5, losses=HAND)
    weights, window = swad.averaged()
    # segments 3..6 = steps 16..35
    assert (window["first_step"], window["last_step"], window["steps"], window["opened"], window["closed"]) == (16, 35, 20, True, True)
    expected = [torch.stack([s[i] for s in seen[15:35]]).mean(0) for i in range(len(weights))]
    for got, want in zip(weights, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(swad.pending) == 0, "a closed window keeps no segment it will not use"


def test_swad_state_resumes_inside_the_window_to_the_same_average() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    whole = SWAD(3, 2, 0.5, bn_batches=0)
    drive(whole, net, steps=len(HAND) * 5, val_every=5, losses=HAND)

    net.load_state_dict(start)
    first = SWAD(3, 2, 0.5, bn_batches=0)
    drive(first, net, steps=6 * 5, val_every=5, losses=HAND)  # killed after check 5: open, segments pending
    buf = io.BytesIO()
    torch.save({"callbacks": {"swad": first.state_dict()}, "net": net.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # as last.ckpt is read
    assert first.window.opened_at == 5 and not first.window.closed and first.pending
    resumed = SWAD(3, 2, 0.5, bn_batches=0)
    resumed.load_state_dict(saved["callbacks"]["swad"])
    net.load_state_dict(saved["net"])
    # the rest of the run: the same random updates from step 31 on
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        for p in net.parameters():
            torch.randn(p.shape, generator=g)
    trainer = Fake(global_step=30, sanity_checking=False, callback_metrics={})
    resumed.on_train_start(trainer, net)
    for step in range(31, len(HAND) * 5 + 1):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        trainer.global_step = step
        resumed.on_train_batch_end(trainer, net, None, None, step - 1)
        if step % 5 == 0:
            trainer.callback_metrics = {LOSS_KEY: torch.tensor(HAND[step // 5 - 1])}
            resumed.on_validation_end(trainer, net)
    (a, wa), (b, wb) = whole.averaged(), resumed.averaged()
    assert wa == wb and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_ema_follows_its_decay_and_batchnorm_is_recomputed() -> None:
    net = torch.nn.Linear(2, 1)
    ema = EMA(decay=0.5, bn_batches=0)
    seen = drive(ema, net, steps=4, val_every=100, losses=[])
    want = seen[0]
    for n, s in enumerate(seen[1:], start=1):
        d = min(0.5, (1 + n) / (10 + n))
        want = [d * w + (1 - d) * x for w, x in zip(want, s, strict=True)]
    got, window = ema.averaged()
    assert window["steps"] == 4 and all(torch.allclose(a, b) for a, b in zip(got, want, strict=True))

    bn_net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    xs = [torch.randn(8, 2) * 3 + 1 for _ in range(4)]
    batches = iter([{"domains": {"a": (x, None)}} for x in xs])
    dm = SimpleNamespace(train_dataloader=lambda: batches, on_after_batch_transfer=lambda b, i: b)
    assert recompute_batchnorm(bn_net, dm, 4) == 4
    with torch.no_grad():
        h = bn_net[0](torch.cat(xs))
    torch.testing.assert_close(bn_net[1].running_mean, h.mean(0), rtol=1e-4, atol=1e-5)  # equal batches: the pooled mean
    assert recompute_batchnorm(torch.nn.Linear(2, 2), dm, 4) == 0, "no BatchNorm: nothing to do"


def test_hparams_seed_draws_swads_keys() -> None:
    defaults = [value(k, "deepall", "small", "tumor_type", 0) for k in ("n_converge", "n_tolerance", "tolerance_ratio", "ema_decay")]
    assert defaults == [3, 6, 0.3, 0.999]
    drawn = {tuple(value(k, "deepall", "small", "tumor_type", s) for k in ("n_converge", "n_tolerance", "tolerance_ratio")) for s in range(1, 6)}
    assert len(drawn) > 1 and all(2 <= a <= 6 and 3 <= b <= 12 and 0.1 <= r <= 1.0 for a, b, r in drawn)


# -- train.py: a SWAD run killed inside its window ends with the uninterrupted run's averaged weights ------------
def swad_overrides(tmp_path: Path, run_dir: Path) -> list[str]:
    # n_converge=1: the window opens at the first check; a wide tolerance keeps it open to the end
    return [*tiny_overrides(tmp_path / "data"), "method=deepall", "averaging=swad", "hparams.n_converge=1", "hparams.n_tolerance=2",
            "hparams.tolerance_ratio=10.0", "steps=12", "val_every=2", f"hydra.run.dir={run_dir}"]  # fmt: skip


def test_train_py_swad_records_its_window_and_resumes_inside_it(tmp_path: Path) -> None:
    from masf_lightning.pipeline import run
    from tests.test_config_schema import compose_train

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cfg = compose_train(swad_overrides(tmp_path, whole)[:-1])  # uninterrupted, in this process (one interpreter start less)
    cfg.hydra = None
    m = run(cfg, whole)
    assert m["averaging"]["name"] == "swad" and m["selected_checkpoint"] == "checkpoints/averaged.ckpt"
    assert (m["averaging_window"]["first_step"], m["averaging_window"]["last_step"], m["averaging_window"]["steps"]) == (1, 12, 12)
    # the online model is the averaging=none run: same trajectory, same selection, same number
    plain = compose_train([*swad_overrides(tmp_path, whole)[:-1], "averaging=none"])
    plain.hydra = None
    p = run(plain, tmp_path / "plain")
    assert (m["online_target_test_acc"], m["online_selected_step"]) == (p["target_test_acc"], p["selected_step"])

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASF_DATA": "/nonexistent-do-not-use", "KILL_AFTER_CHECKS": "3"}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKS, str(ROOT / "train.py"), *swad_overrides(tmp_path, killed)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = load_checkpoint(killed / "checkpoints" / "last.ckpt")
    swad_state = next(v for k, v in state["callbacks"].items() if k.startswith("SWAD"))
    assert len(swad_state["losses"]) == 3 and swad_state["kept"] is not None, "killed inside the window, averages kept"
    assert run_train(swad_overrides(tmp_path, killed)).returncode == 0
    a = load_checkpoint(whole / "checkpoints" / "averaged.ckpt")
    b = load_checkpoint(killed / "checkpoints" / "averaged.ckpt")
    assert a["window"] == b["window"] and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    mk = json.loads((killed / "metrics.json").read_text())
    assert mk["resumed"] and mk["target_test_acc"] == m["target_test_acc"]


def test_masf_with_ema_in_process(tmp_path: Path) -> None:
    """MASF + EMA through the pipeline in this process (no second interpreter start: cheap)."""
    from masf_lightning.pipeline import run
    from tests.test_config_schema import compose_train

    cfg = compose_train([*tiny_overrides(tmp_path / "data"), "method=masf", "averaging=ema"])
    cfg.hydra = None  # resolved already: the pipeline reads the training keys only
    m = run(cfg, tmp_path / "ema")
    assert m["averaging"] == {"name": "ema", "decay": 0.999, "bn_batches": 100} and m["averaging_window"]["steps"] == 4
    assert m["selected_checkpoint"] == "checkpoints/averaged.ckpt" and (tmp_path / "ema" / "checkpoints" / "averaged.ckpt").is_file()


# -- collect.py: `DeepAll + SWAD` is a column, paired with DeepAll and with the same method without averaging ---------
def _metrics(method: str, seed: int, acc: float, averaging: str = "none", online: float | None = None) -> dict:
    m = {"method": method, "task": "tumor_type", "target": "400x", "sources": ["40x", "100x", "200x"], "seed": seed, "hparams_seed": 0,
         "protocol": "patient", "selection": "source_val", "steps": 800, "backbone": "small", "target_test_acc": acc, "hparams": {"optimizers": "separate"}}  # fmt: skip
    if averaging != "none":
        m |= {"averaging": {"name": averaging}, "online_target_test_acc": online, "online_selected_step": 400}
    return m


def test_collect_pairs_averaging_with_its_method_and_deepall(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    import collect

    runs = {"deepall/s{}": ("deepall", [0.40, 0.42, 0.44], "none", None), "masf/s{}": ("masf", [0.38, 0.41, 0.40], "none", None),
            "masf+swad/s{}": ("masf", [0.41, 0.43, 0.45], "swad", [0.38, 0.41, 0.40])}  # fmt: skip
    for folder, (method, accs, averaging, online) in runs.items():
        for seed, acc in enumerate(accs):
            path = tmp_path / "runs" / folder.format(seed) / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_metrics(method, seed, acc, averaging, online[seed] if online else None)))
    assert collect.main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| Source"))
    assert "| MASF | MASF + SWAD | DeepAll |" in header and "MASF + SWAD − MASF (paired, 95% CI)" in header
    assert "MASF + SWAD − DeepAll (paired, 95% CI)" in header
    row = next(line for line in out.splitlines() if line.startswith("| 40×"))
    assert "+3.33 ±" in row and "MASF + SWAD − MASF at 400×: n = 3 seeds" in out  # (3 + 2 + 5) / 3 points over MASF

    # only the averaged runs: --online counts their online model as the method without averaging
    shutil.rmtree(tmp_path / "runs" / "masf")
    assert collect.main([str(tmp_path / "runs"), "--online"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 40×"))
    assert row.split(" | ")[2].startswith("39.67 ± ") and "+3.33 ±" in row, row


def test_a_run_from_before_the_averaging_group_is_still_the_same_run(tmp_path: Path) -> None:
    from masf_lightning.run_folder import claim_run_dir
    from tests.test_config_schema import compose_train

    cfg = compose_train(["paths.data=/tmp/unused"])
    assert claim_run_dir(cfg, tmp_path) is None
    saved = json.loads((tmp_path / "run_config.json").read_text())
    del saved["averaging"]  # as written before the group existed
    (tmp_path / "run_config.json").write_text(json.dumps(saved))
    (tmp_path / "metrics.json").write_text(json.dumps({"target_test_acc": 0.5}))
    assert claim_run_dir(cfg, tmp_path) == {"target_test_acc": 0.5}, "skipped as finished, not refused"
