"""Labels for patches: a slide table (--labels slides.csv) and region annotations (QuPath's GeoJSON export).

The slide table has a `slide` column (file name, with or without extension), optionally `patient`, `mpp`
(µm/px for slides whose file lacks it) and any label columns, copied to each of the slide's patches. A
GeoJSON holds polygons (holes and MultiPolygons included) in level-0 pixels with a classification name;
a patch takes the class of the polygon holding its centre (column `annotation`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.path import Path as PolyPath

from masf_lightning.errors import DataError

ANNOTATION_COLUMN = "annotation"
SLIDE_TABLE_RESERVED = ("slide", "patient", "mpp")


def read_slide_table(path: str | Path) -> pd.DataFrame:
    """The slide table indexed by slide name (extension dropped); one clear line on a bad file."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"slide": str, "patient": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"--labels {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if "slide" not in frame.columns:
        raise DataError(f"--labels {path}: no column slide (columns found: {', '.join(map(str, frame.columns))})")
    frame["slide"] = frame["slide"].map(lambda s: Path(str(s)).stem if Path(str(s)).suffix.lower() in SLIDE_SUFFIXES else str(s))
    if frame["slide"].duplicated().any():
        raise DataError(f"--labels {path}: slide {frame['slide'][frame['slide'].duplicated()].iloc[0]} is listed twice")
    return frame.set_index("slide")


# file extensions read as slides when a folder is given
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".ome.tif")


def _class_name(props: dict[str, Any]) -> str | None:
    c = props.get("classification")
    if isinstance(c, dict):
        return c.get("name")
    if isinstance(c, str):
        return c
    return None


class Annotations:
    """Classified polygons of one slide; `label(x, y)` is the class of the first polygon holding the point."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable GeoJSON ({exc})") from None
        features = data.get("features", [data]) if isinstance(data, dict) else data
        self.polygons: list[tuple[str, PolyPath, list[PolyPath]]] = []
        for feature in features:
            geometry = (feature or {}).get("geometry") or {}
            name = _class_name(feature.get("properties") or {})
            if name is None:
                continue
            kind, coords = geometry.get("type"), geometry.get("coordinates") or []
            polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
            for rings in polys:
                if rings:
                    self.polygons.append((str(name), PolyPath(rings[0]), [PolyPath(r) for r in rings[1:]]))
        self.classes = sorted({name for name, _, _ in self.polygons})

    def label(self, x: float, y: float) -> str | None:
        for name, outer, holes in self.polygons:
            if outer.contains_point((x, y)) and not any(h.contains_point((x, y)) for h in holes):
                return name
        return None
