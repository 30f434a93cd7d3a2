"""Image files to uint8 RGB tensors, with one policy for every reader (the image cache, the stain reference)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from masf_lightning.errors import DataError

__all__ = ["decode_rgb_file"]


def decode_rgb_file(path: str | os.PathLike[str]) -> tuple[torch.Tensor, bool]:
    """Decode an image file to uint8 3×H×W; returns (image, whether an alpha channel was dropped).

    Policy: RGBA → RGB by dropping alpha (slide exporters add an opaque alpha; the colours are intact);
    16-bit → 8-bit by scaling; grayscale → DataError, because a grey image has no stain information and
    in an H&E dataset (BreaKHis is all RGB) it means a wrong or damaged file. Missing, unreadable,
    corrupt or truncated files are a DataError naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{path}: image file is empty")
    try:
        image = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED
        )
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "Unsupported image file" in reason:  # no image signature at all: a text file, a PDF, ...
            raise DataError(f"{path}: not an image file (PNG, JPEG, WEBP or GIF)") from None
        raise DataError(f"{path}: corrupt or truncated image ({reason})") from None
    if image.dtype != torch.uint8:
        image = TF.to_dtype(image, torch.uint8, scale=True)
    channels = image.shape[0]
    if channels in (1, 2):
        raise DataError(f"{path}: grayscale image; expected an RGB H&E image")
    if channels == 4:
        return image[:3].contiguous(), True
    if channels != 3:
        raise DataError(f"{path}: unexpected {channels}-channel image")
    return image, False
