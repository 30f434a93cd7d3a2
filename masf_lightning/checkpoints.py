"""Reading checkpoints without running code: every checkpoint this project opens (resume, the selected model,
re-evaluation, predict/embed/search, the tensor cache, ImageNet weights) goes through `load_checkpoint`.

A .ckpt is a pickle, and unpickling can call any function the file names. `torch.load(weights_only=True)`
only rebuilds tensors, dtypes and plain containers (dict, list, tuple, str, numbers, None); anything else
is refused with one line naming the file. Our Lightning checkpoints (every method, early stopping, the
checkpoint callbacks, optimizer states) hold nothing more: `torch.serialization.get_unsafe_globals_in_checkpoint`
lists no global for any of them, so the allow-list below is empty. A type a future checkpoint needs goes
there, and only a plain data type (never a function or a class whose construction runs code).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from masf_lightning.errors import DataError

# Globals beyond torch's own weights_only set that our checkpoints may name (measured: none).
SAFE_GLOBALS: list[Any] = []

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with the allow-list; a refused or unreadable file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign pickle: refused below
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise DataError(f"{path}: cannot be read as a checkpoint (UnpicklingError: {text.splitlines()[0][:120]})") from None
        name = _GLOBAL.search(text)
        what = f"loading it would call {name[1]}" if name else "its pickle uses instructions a file of tensors and plain data does not need"
        raise DataError(
            f"{path}: refused, {what}; checkpoints are read as tensors and plain data only (weights_only=True), "
            "so a file from elsewhere cannot run code"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file raises whatever the reader meets first
        raise DataError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}): truncated, or not a checkpoint") from None


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A fingerprint of a network's weights (names, shapes, dtypes, values): a search index is queried with the model
    that built it only, a feature cache is reused by the same encoder weights only."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader for `trainer.fit(ckpt_path=...)` (resume): `load_checkpoint`, nothing else."""

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location)  # `weights_only` is ignored: always True here
