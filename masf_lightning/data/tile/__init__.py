"""Whole slides to patches of the same tissue at chosen µm per pixel: `python -m masf_lightning.data.tile`.

Layers, each importing only those above it: slides (readers, µm/px from the file) → tissue (Otsu mask) →
grid (regions, levels, concentric patches) → labels (slide table, GeoJSON) → writer (one slide, resume,
manifest) → __main__ (the command: progress, workers, skipped slides).
"""
