"""One self-contained HTML page of search results: each query beside its k nearest archive images.

Thumbnails are the original files (not the stain-normalized network input: what a pathologist recognizes),
scaled to THUMB px on their longer side, as JPEG data URIs: the page opens anywhere, without the archive.
"""

from __future__ import annotations

import base64
import functools
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision.io import encode_jpeg
from torchvision.transforms.v2 import functional as TF

from masf_lightning.data.decode import decode_rgb_file
from masf_lightning.errors import DataError

THUMB = 192

CSS = """
body { font: 14px/1.35 system-ui, sans-serif; margin: 24px; color: #1d232a; background: #f6f7f9; }
h1 { font-size: 20px; margin: 0 0 4px; }
.about { color: #5b6570; margin: 0 0 20px; }
.about code { background: #eceff3; padding: 1px 4px; border-radius: 3px; }
section.query { display: flex; gap: 18px; align-items: flex-start; background: #fff; border: 1px solid #dde2e8;
  border-radius: 8px; padding: 12px; margin-bottom: 14px; }
figure { margin: 0; width: 180px; flex: none; }
figure img, figure .missing { width: 180px; height: 124px; object-fit: contain; background: #eceff3; border-radius: 4px;
  display: block; border: 3px solid transparent; box-sizing: border-box; }
figure .missing { background: #eceff3; color: #8a939c; font-size: 12px; display: flex; align-items: center; justify-content: center; }
figure.query-image { width: 210px; }
figure.query-image img, figure.query-image .missing { width: 210px; height: 145px; border-color: #1d232a; }
figure.neighbour.same-class img { border-color: #2e9e5b; }
figure.neighbour.other-class img { border-color: #d9534f; }
figcaption { font-size: 12px; margin-top: 4px; }
figcaption .file { color: #8a939c; overflow-wrap: anywhere; }
figcaption b { font-size: 13px; }
.hits { display: flex; flex-wrap: wrap; gap: 10px; }
.muted { color: #8a939c; }
.nw { white-space: nowrap; }
.legend span { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin: 0 4px 0 10px; }
"""


@functools.lru_cache(maxsize=4096)  # an archive image near many queries is drawn once
def thumbnail(path: str | Path) -> str | None:
    """The image as a JPEG data URI, longer side THUMB px (never enlarged); None when the file cannot be read."""
    try:
        image, _ = decode_rgb_file(path)
    except DataError:
        return None
    h, w = image.shape[-2:]
    if max(h, w) > THUMB:
        image = TF.resize(image, [max(1, round(h * THUMB / max(h, w))), max(1, round(w * THUMB / max(h, w)))], antialias=True)
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(image, quality=85).numpy().tobytes()).decode()


def _known(value: Any) -> bool:
    return value is not None and value == value and value != ""  # not None, NaN or empty


def _facts(row: dict[str, Any]) -> str:
    """'DC · 400x · patient 14-2523': what the run's table (or a BreaKHis file name) says of the image."""
    parts = [str(row[k]) if k != "patient" else f"patient {row[k]}" for k in ("label", "domain", "patient") if _known(row.get(k))]
    return " · ".join(f'<span class="nw">{html.escape(p)}</span>' for p in parts) if parts else '<span class="muted">not in the run\'s table</span>'


def _figure(css: str, row: dict[str, Any], caption: str, data: dict[str, Any]) -> str:
    src = thumbnail(row["path"])
    img = f'<img src="{src}" alt="{html.escape(Path(row["path"]).name)}">' if src else '<div class="missing">image not found</div>'
    attrs = " ".join(f'data-{k}="{html.escape(str(v))}"' for k, v in data.items() if v is not None)
    return f'<figure class="{css}" {attrs}>{img}<figcaption>{caption}</figcaption></figure>'


def render_page(info: dict[str, Any], queries: Sequence[dict[str, Any]], hits: Sequence[Sequence[dict[str, Any]]], k: int, excluded: bool) -> str:
    """The page: a header naming the model, the index and the settings, then one section per query."""
    sections = []
    for n, (q, found) in enumerate(zip(queries, hits, strict=True), 1):
        name = html.escape(Path(q["path"]).name)
        same = f"<br>same class: {sum(h.get('label') == q['label'] for h in found)} of {len(found)}" if _known(q.get("label")) else ""
        caption = f"<b>query {n}</b><br>{_facts(q)}{same}<br><span class=\"file\">{name}</span>"
        head = _figure("query-image", q, caption, {"path": q["path"], "class": q.get("label")})
        cards = []
        for h in found:
            verdict = "" if not _known(q.get("label")) else (" same-class" if h.get("label") == q["label"] else " other-class")
            caption = f"<b>#{h['rank']}</b> d = {h['distance']:.4g}<br>{_facts(h)}<br><span class=\"file\">{html.escape(Path(h['path']).name)}</span>"
            data = {"rank": h["rank"], "distance": f"{h['distance']:.6g}", "class": h.get("label"), "domain": h.get("domain"), "patient": h.get("patient"), "path": h["path"]}
            cards.append(_figure(f"neighbour{verdict}", h, caption, data))
        sections.append(f'<section class="query" data-query="{html.escape(q["path"])}">{head}<div class="hits">{"".join(cards)}</div></section>')
    about = (
        f"model <code>{html.escape(info['model_id'])}</code> ({html.escape(info['method'])}, run <code>{html.escape(info['run_dir'])}</code>, step {info['step']}) · "
        f"{info['count']} archive images, {html.escape(info['space'])} ({info['dim']}-d), {html.escape(info['kind'])} index · "
        f"k = {k}, Euclidean distance{' · the query’s own patient excluded' if excluded else ''}"
    )
    legend = '<span style="background:#2e9e5b"></span>same tumour type as the query<span style="background:#d9534f"></span>another type'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>masf-lightning search</title>'
        f"<style>{CSS}</style></head><body><h1>Nearest archive images</h1><p class=\"about\">{about}<br><span class=\"legend\">{legend}</span></p>"
        f"{''.join(sections)}</body></html>\n"
    )
