"""Weight averaging for every method (`averaging=none|ema|swad`): the window logic (window.py), the callbacks that
keep the averages during training (callbacks.py), and what happens after training (apply.py)."""

from masf_lightning.averaging.apply import AVERAGED_CHECKPOINT, install_average, recompute_batchnorm
from masf_lightning.averaging.callbacks import EMA, SWAD, Averager
from masf_lightning.averaging.window import SwadWindow


def none(name: str = "none") -> None:
    """averaging=none: no callback; the selected checkpoint's online weights are the model."""
    return None


__all__ = ["AVERAGED_CHECKPOINT", "EMA", "SWAD", "Averager", "SwadWindow", "install_average", "none", "recompute_batchnorm"]
