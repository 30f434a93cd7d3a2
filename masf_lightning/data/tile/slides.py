"""Opening a whole-slide image through tiffslide or OpenSlide, and its µm per pixel from the file itself.

µm/px comes from the slide, never from an objective power: the reader's `mpp-x/y` (tiffslide or OpenSlide,
which read Aperio's `MPP` and the TIFF resolution tags), Aperio's `MPP`, then the TIFF resolution tags read
here (centimetres, inches, millimetres or micrometres), else None (the caller refuses the slide or takes
--slide-mpp). Readers read level pixels, so a level's own downsample (4.0001…) never shifts a patch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

READERS: tuple[str, ...] = ("tiffslide", "openslide")
_MPP_KEYS: tuple[tuple[str, str], ...] = (
    ("tiffslide.mpp-x", "tiffslide.mpp-y"),
    ("openslide.mpp-x", "openslide.mpp-y"),
    ("aperio.MPP", "aperio.MPP"),
)
# µm per unit of TIFF ResolutionUnit: 2 inch, 3 centimetre; 4 millimetre and 5 micrometre (tifffile's extension)
_UM_PER_UNIT: dict[int, float] = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}


def positive_number(value: Any) -> float | None:
    """A finite number > 0 (µm/px as a file or a labels table writes it), else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def mpp_from_properties(props: Mapping[str, Any]) -> float | None:
    """µm/px (mean of x and y) from a reader's properties, or None."""
    for kx, ky in _MPP_KEYS:
        x, y = positive_number(props.get(kx)), positive_number(props.get(ky))
        if x and y:
            return (x + y) / 2
    return None


def mpp_from_tiff_tags(path: str | Path) -> float | None:
    """µm/px from the first page's XResolution/YResolution and ResolutionUnit, or None (no unit, not a TIFF)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages.first.tags
            unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
            xr, yr = tags.get("XResolution"), tags.get("YResolution")
            if unit not in _UM_PER_UNIT or xr is None or yr is None:
                return None
            per = [positive_number(t.value[0] / t.value[1]) if isinstance(t.value, tuple) else positive_number(t.value) for t in (xr, yr)]
    except Exception:  # not a TIFF, or one tifffile cannot parse: no mpp from tags
        return None
    if not all(per):
        return None
    return (_UM_PER_UNIT[unit] / per[0] + _UM_PER_UNIT[unit] / per[1]) / 2


class TileCache:
    """One tiled TIFF page's tiles, decoded on demand by tifffile and kept (least recently used out)."""

    def __init__(self, tif: Any, page: Any, capacity: int = 384) -> None:
        self.tif, self.page, self.capacity = tif, page, capacity
        self.tw, self.th = int(page.tilewidth), int(page.tilelength)
        self.across = -(-int(page.shape[1]) // self.tw)
        self.tiles: OrderedDict[int, np.ndarray] = OrderedDict()

    def tile(self, tx: int, ty: int) -> np.ndarray:
        index = ty * self.across + tx
        hit = self.tiles.get(index)
        if hit is not None:
            self.tiles.move_to_end(index)
            return hit
        offset, count = int(self.page.dataoffsets[index]), int(self.page.databytecounts[index])
        if count == 0:  # a tile the scanner did not write: white
            arr = np.full((self.th, self.tw, 3), 255, np.uint8)
        else:
            decode = self.page.decode  # first: building it reads tags, moving the file position
            fh = self.tif.filehandle
            fh.seek(offset)
            arr = decode(fh.read(count), index)[0].reshape(self.th, self.tw, 3)
        self.tiles[index] = arr
        if len(self.tiles) > self.capacity:
            self.tiles.popitem(last=False)
        return arr

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level pixels [x0, x1) × [y0, y1), inside the level."""
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for ty in range(y0 // self.th, (y1 - 1) // self.th + 1):
            for tx in range(x0 // self.tw, (x1 - 1) // self.tw + 1):
                ax0, ay0 = tx * self.tw, ty * self.th
                cx0, cy0, cx1, cy1 = max(x0, ax0), max(y0, ay0), min(x1, ax0 + self.tw), min(y1, ay0 + self.th)
                out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self.tile(tx, ty)[cy0 - ay0 : cy1 - ay0, cx0 - ax0 : cx1 - ax0]
        return out


@dataclass
class Slide:
    """An open slide: level sizes (w, h) and µm/px of the base level (None: the file does not say)."""

    path: Path
    reader: str
    handle: Any
    level_dimensions: tuple[tuple[int, int], ...]
    mpp: float | None
    _caches: dict[int, TileCache | None] = field(default_factory=dict)
    _tif: Any = None

    def level_downsample(self, level: int) -> float:
        """The level's downsample from its size (x and y averaged): exact, whatever the reader rounds."""
        (w0, h0), (w, h) = self.level_dimensions[0], self.level_dimensions[level]
        return (w0 / w + h0 / h) / 2

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of level pixels [x, x+w) × [y, y+h); outside the level reads as white."""
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        out = np.full((h, w, 3), 255, np.uint8)
        if x1 <= x0 or y1 <= y0:
            return out
        tiles = self._tiles(level)
        if tiles is not None:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = tiles.read(x0, y0, x1, y1)
            return out
        ds = self.handle.level_downsamples[level]
        if self.reader == "tiffslide":
            # tiffslide maps level 0 to level pixels by int(loc / downsample): pick loc so that gives exactly x0
            loc = [_base_coordinate(v, ds) for v in (x0, y0)]
            arr = self.handle.read_region(loc, level, (x1 - x0, y1 - y0), as_array=True, padding=False)
        else:
            rgba = self.handle.read_region((round(x0 * ds), round(y0 * ds)), level, (x1 - x0, y1 - y0))
            arr = np.asarray(rgba.convert("RGB"))
        out[y0 - y : y1 - y, x0 - x : x1 - x] = arr[..., :3]
        return out

    def _tiles(self, level: int) -> TileCache | None:
        """tiffslide's level as JPEG/other tiles decoded by tifffile and kept (overlapping regions share them);
        None where the level is not a plain tiled RGB page (tiffslide's read_region then)."""
        if self.reader != "tiffslide":
            return None
        if level not in self._caches:
            self._caches[level] = None
            try:
                import tifffile

                self._tif = self._tif or tifffile.TiffFile(self.path)  # its own file handle, positioned by us alone
                tif = self._tif
                page = tif.series[int(self.handle.properties.get("tiffslide.series-index", 0))].levels[level].pages[0]
                plain = page.is_tiled and page.planarconfig == 1 and page.dtype == np.uint8 and page.shape[-1] == 3
                plain = plain and page.imagedepth == 1 and tuple(page.shape[:2][::-1]) == self.level_dimensions[level]
                if plain:
                    self._caches[level] = TileCache(tif, page)
            except Exception:  # any layout this fast path does not know: tiffslide's own reading
                self._caches[level] = None
        return self._caches[level]

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """The coarsest level not smaller than max_side (or the coarsest), and its downsample."""
        level = len(self.level_dimensions) - 1
        while level > 0 and max(self.level_dimensions[level]) < max_side:
            level -= 1
        w, h = self.level_dimensions[level]
        return self.read(level, 0, 0, w, h), self.level_downsample(level)

    def close(self) -> None:
        self.handle.close()
        if self._tif is not None:
            self._tif.close()


def _base_coordinate(v: int, ds: float) -> int:
    loc = math.floor(v * ds)
    while int(loc / ds) < v:
        loc += 1
    return loc


def open_slide(path: str | Path, reader: str = "tiffslide") -> Slide:
    """Open `path` with `reader`; raises OSError-like exceptions on an unreadable file (the caller skips it)."""
    path = Path(path)
    if reader == "tiffslide":
        import tiffslide

        handle = tiffslide.TiffSlide(path)
    elif reader == "openslide":
        import openslide

        handle = openslide.OpenSlide(str(path))
    else:
        raise ValueError(f"--reader {reader}: expected one of {', '.join(READERS)}")
    mpp = mpp_from_properties(handle.properties) or mpp_from_tiff_tags(path)
    dims = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
    return Slide(path=path, reader=reader, handle=handle, level_dimensions=dims, mpp=mpp)
