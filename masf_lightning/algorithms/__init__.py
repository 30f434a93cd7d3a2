"""Algorithms as small LightningModules on one base: DeepAll (baseline) and MASF."""

from masf_lightning.algorithms.base import DGModule
from masf_lightning.algorithms.deepall import DeepAll
from masf_lightning.algorithms.masf import MASF

__all__ = ["DGModule", "DeepAll", "MASF"]
