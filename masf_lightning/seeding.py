"""Randomness that depends only on what it is for: step k of a run draws the same numbers whether the run
was resumed, sharded over processes or not, because its seed is a function of (seed, step, purpose)."""

from __future__ import annotations

import hashlib

import torch


def step_seed(seed: int, step: int, salt: str = "") -> int:
    """A 63-bit seed from (seed, step, salt): the randomness of step k never depends on steps before it."""
    digest = hashlib.blake2b(f"{seed}/{step}/{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def step_generator(seed: int, step: int, salt: str = "") -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, salt))
