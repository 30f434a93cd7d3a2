"""Where a dataset table comes from: BreaKHis's folder (real or synthetic), a user's manifest, a folder of images.

`open_table(data.format, ...)` is what the config check and the DataModule call, with the `data.` keys. Files
are stat-ed, never decoded here: decoding happens once, in the tensor cache. Torch-free.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from masf_lightning.data.table import DatasetTable, check_frame, order_domains
from masf_lightning.errors import ConfigError, DataError

SHOWN = 3  # bad paths named in an error, before "and N more"
FOLDER_LABEL = "class"  # the label column of a `DIR/<domain>/<class>/<image>` folder
TASK_NOT_SET = "(not set: pass task=<label column>)"  # data=manifest's task when the table has several label columns


def image_extensions() -> frozenset[str]:
    """Every file extension PIL opens (lower case, with the dot)."""
    Image.init()
    return frozenset(Image.registered_extensions())


def _check_files(frame: pd.DataFrame, root: Path, where: str, on_bad_file: str) -> pd.DataFrame:
    """Every path exists and names an image file by its extension; `skip` drops the others with one warning."""
    extensions = image_extensions()
    bad: list[tuple[int, str, str]] = []
    for i, rel in enumerate(frame["path"].tolist()):
        path = root / rel
        if os.path.splitext(rel)[1].lower() not in extensions:
            bad.append((i, rel, "not an image file"))
            continue
        try:
            if os.stat(path).st_size == 0:
                bad.append((i, rel, "empty file"))
        except OSError:
            bad.append((i, rel, "does not exist"))
    if not bad:
        return frame
    shown = "; ".join(f"{rel} ({why})" for _, rel, why in bad[:SHOWN])
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    if on_bad_file == "raise":
        raise DataError(
            f"{where}: {len(bad)} path(s) are not readable images (relative to {root}): {shown}{more}; "
            "fix the table, or drop such rows with data.on_bad_file=skip"
        )
    warnings.warn(f"{where}: skipped {len(bad)} row(s) whose path is not a readable image: {shown}{more}", UserWarning, stacklevel=3)
    return frame.drop(frame.index[[i for i, _, _ in bad]]).reset_index(drop=True)


def read_manifest(
    manifest: str | os.PathLike[str], domains: Sequence[str] | None = None, on_bad_file: str = "raise"
) -> DatasetTable:
    """A user's table (CSV or Parquet) of patches; relative paths are relative to the file's folder."""
    path = Path(manifest)
    if not path.is_file():
        raise DataError(f"data.manifest={path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={"path": str, "domain": str, "patient": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header line with path,domain,patient,<label columns>") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable CSV or Parquet table ({str(exc).splitlines()[0]})") from None
    frame = check_frame(frame, str(path))
    frame["path"] = frame["path"].map(lambda p: Path(p).as_posix())
    frame = _check_files(frame, path.parent, str(path), on_bad_file)
    return DatasetTable(frame=frame, root=path.parent, domains=order_domains(frame, domains), name=str(path))


def sole_label_column(manifest: Any) -> str:
    """`${label_column:${data.manifest}}` (data=manifest's default task): the table's one label column, so a table
    with a single one (the tiler's) trains without task=; else a placeholder the dataset check refuses in one line
    listing the label columns (a task= on the command line replaces it)."""
    path = Path(str(manifest))
    if not path.is_file():
        return TASK_NOT_SET
    try:
        st = path.stat()
        return _sole_label_column(str(path), st.st_mtime_ns, st.st_size)
    except Exception:  # read_manifest names what is wrong with the file when the run opens it
        return TASK_NOT_SET


@functools.lru_cache(maxsize=8)
def _sole_label_column(path: str, mtime_ns: int, size: int) -> str:
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, nrows=10_000)
    columns = DatasetTable(frame=frame, root=Path(path).parent, domains=(), name=path).label_columns
    return columns[0] if len(columns) == 1 else TASK_NOT_SET


def index_folder(
    root: str | os.PathLike[str],
    patient_regex: str | None = None,
    domains: Sequence[str] | None = None,
    on_bad_file: str = "raise",
) -> DatasetTable:
    """`DIR/<domain>/<class>/<image>` (images may sit deeper below the class folder); the patient from the
    file name by `patient_regex` (its one group), else one per image."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root={root}: no such folder; expected DIR/<domain>/<class>/<image>")
    pattern = _patient_pattern(patient_regex)
    extensions = image_extensions()
    rows: list[tuple[str, str, str, str]] = []
    for domain_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for class_dir in sorted(p for p in domain_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for dirpath, dirnames, filenames in os.walk(class_dir):
                dirnames.sort()
                for name in sorted(filenames):
                    if os.path.splitext(name)[1].lower() not in extensions:
                        continue
                    rel = Path(dirpath, name).relative_to(root).as_posix()
                    rows.append((rel, domain_dir.name, class_dir.name, _patient(pattern, name, rel, patient_regex)))
    if not rows:
        raise DataError(f"data.root={root}: no images in the layout DIR/<domain>/<class>/<image>")
    frame = pd.DataFrame(rows, columns=["path", "domain", FOLDER_LABEL, "patient"])
    if pattern is None:
        print(
            f"warning: {root}: no data.patient_regex, so every image is its own patient: a patient split then splits "
            "images, not patients (set data.patient_regex to a pattern whose one group is the patient in the file name)",
            file=sys.stderr,
        )
    frame = _check_files(check_frame(frame, str(root)), root, str(root), on_bad_file)
    return DatasetTable(frame=frame, root=root, domains=order_domains(frame, domains), name=str(root))


def _patient_pattern(patient_regex: str | None) -> re.Pattern[str] | None:
    if not patient_regex:
        return None
    try:
        pattern = re.compile(patient_regex)
    except re.error as exc:
        raise ConfigError(f"data.patient_regex={patient_regex!r}: not a regular expression ({exc})") from None
    if pattern.groups != 1:
        raise ConfigError(f"data.patient_regex={patient_regex!r}: needs exactly one group (the patient), has {pattern.groups}")
    return pattern


def _patient(pattern: re.Pattern[str] | None, name: str, rel: str, regex: str | None) -> str:
    if pattern is None:
        return rel.split("/", 2)[-1]  # the image's path below its domain folder: one patient per image
    m = pattern.search(name)
    if m is None or not m.group(1):
        raise DataError(f"{rel}: data.patient_regex={regex!r} finds no patient in the file name")
    return m.group(1)


def open_table(
    format: str,
    *,
    root: str | None = None,
    manifest: str | None = None,
    domains: Sequence[str] | None = None,
    patient_regex: str | None = None,
    on_bad_file: str = "raise",
    synthetic: dict[str, Any] | None = None,
    progress: bool = False,
) -> DatasetTable:
    """The table `data.format` names, from the `data.` keys (a synthetic BreaKHis is generated first if absent)."""
    if format == "manifest":
        if not manifest or manifest == "???":
            raise ConfigError("data.manifest is not set: pass data.manifest=FILE (a CSV or Parquet table)")
        return read_manifest(manifest, domains, on_bad_file)
    if root in (None, "", "???"):
        what = "DIR/<domain>/<class>/<image>" if format == "folder" else "the folder holding BreaKHis_v1"
        raise ConfigError(f"data.root is not set: pass data.root=DIR ({what})")
    if format == "folder":
        return index_folder(root, patient_regex, domains, on_bad_file)
    from masf_lightning.data.breakhis import breakhis_table

    if synthetic is not None:
        from masf_lightning.data.synthetic.writer import generate_synthetic_breakhis

        generate_synthetic_breakhis(root, progress=progress, **synthetic)
    return breakhis_table(root, on_error=on_bad_file)
