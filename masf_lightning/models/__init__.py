"""Networks split as the paper's Fig. 1: featurizer F_ψ, classifier F_θ, embedder F_φ."""

from masf_lightning.models.backbones import Backbone, Preprocessing, alexnet, resnet18, small
from masf_lightning.models.heads import make_classifier, make_embedder

__all__ = ["Backbone", "Preprocessing", "alexnet", "resnet18", "small", "make_classifier", "make_embedder"]
