"""Procedural "synthetic BreaKHis": the embedded default dataset and the test data.

Each patient is one procedurally drawn H&E slide (glands, ducts, nests, mucin, papillae, stroma
and nuclei defined at every point of a continuous slide in micrometres). An image is a field of
view of that slide: 40x sees 1.6 mm, 400x a 10x narrower window of it, so the class cues shift
with magnification exactly as in the real data: architecture at 40x, nuclei at 400x. The slide
is rendered through a Beer-Lambert H&E model with per-patient stain vectors, intensities and
illumination, so stain normalization has work to do. Everything derives from `seed`: the same
seed gives byte-identical PNGs.

The tree follows the official BreaKHis layout and naming, so the same index code reads both.

Layers, each importing only those above it: primitives (noise, points, views, cell grids) → nuclei →
optics (stain, illumination, blur) → slide (the base class) → benign / malignant (the eight types) →
dataset (patients, fields of view, names; render_image) → writer (the tree on disk) → cli.
"""

from masf_lightning.data.synthetic.cli import main
from masf_lightning.data.synthetic.dataset import _MAGNIFICATIONS as _MAGNIFICATIONS
from masf_lightning.data.synthetic.dataset import _TYPES as _TYPES
from masf_lightning.data.synthetic.dataset import expected_files, render_image
from masf_lightning.data.synthetic.writer import MARKER_NAME, generate_synthetic_breakhis

__all__ = ["MARKER_NAME", "generate_synthetic_breakhis", "expected_files", "render_image", "main"]
