"""Algorithms as small LightningModules on one base: DeepAll (baseline), MASF, and the neighbours to compare
against — MLDG (meta-learning, MASF's ancestor), CORAL (feature alignment) and DeepAll with magnification zoom."""

from masf_lightning.algorithms.base import DGModule
from masf_lightning.algorithms.coral import CORAL
from masf_lightning.algorithms.deepall import DeepAll
from masf_lightning.algorithms.deepall_zoom import DeepAllZoom
from masf_lightning.algorithms.masf import MASF
from masf_lightning.algorithms.mldg import MLDG

__all__ = ["CORAL", "DGModule", "DeepAll", "DeepAllZoom", "MASF", "MLDG"]
