"""masf-lightning: magnification generalization for histopathology embeddings (MASF, DeepAll)."""

__version__ = "0.1.0"
