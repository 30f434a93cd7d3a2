"""Figure for docs/data.md: one patient per tumour type (rows) at the four magnifications (columns).

python experiments/plot_synthetic_grid.py docs/img/synthetic_grid.png [--size 350x230] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from masf_lightning.data.synthetic import _MAGNIFICATIONS, _TYPES, render_image  # noqa: E402
from masf_lightning.io import atomic_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="350x230", help="rendered image size WIDTHxHEIGHT (max 700x460)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patient", type=int, default=0)
    parser.add_argument("--index", type=int, default=0, help="which region of interest of the slide")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    fig, axes = plt.subplots(len(_TYPES), len(_MAGNIFICATIONS), figsize=(4 * 2.3, len(_TYPES) * 1.62))
    for r, (code, (cls, folder)) in enumerate(_TYPES.items()):
        for c, mag in enumerate(_MAGNIFICATIONS):
            ax = axes[r, c]
            img = render_image(code, mag, seed=args.seed, patient=args.patient, index=args.index, size=(w, h))
            ax.imshow(img, interpolation="lanczos")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{mag}x", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{code}\n{folder.replace('_', ' ')}\n({cls})", fontsize=7.5)
    fig.suptitle("Synthetic BreaKHis: one patient per type; the same region zoomed 40x to 400x", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98), h_pad=0.3, w_pad=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    # a 256-colour palette keeps the figure under 1 MB in the repository with no visible loss
    img = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    # write via a temporary file so an interrupted run never leaves a truncated figure
    with atomic_path(args.out) as tmp:
        img.save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
