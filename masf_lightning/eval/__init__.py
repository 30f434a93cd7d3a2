"""Evaluation: classification metrics, cross-magnification retrieval, embeddings and plots."""
