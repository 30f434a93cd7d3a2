"""Download, verify and safely extract BreaKHis v1: ``python -m masf_lightning.data.download DIR [--url URL]``.

The archive arrives in ``DIR/BreaKHis_v1.tar.gz.part`` (resumed with an HTTP Range request after a dropped
connection, started over when the server ignores Range) and is renamed only when complete; its size and
SHA-256 are recorded in ``DIR/BreaKHis_v1.tar.gz.json``. Extraction goes into a staging folder renamed into
place, member by member checked as tarfile's ``data`` filter does (no absolute paths, no ``..``, no links
leaving DIR, no devices), so a killed or refused extraction never leaves a tree that looks complete.
Running it again when DIR already holds a BreaKHis tree only verifies and reports.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import sys
import tarfile
import time
import zlib
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from masf_lightning.data import breakhis
from masf_lightning.errors import DataError, MasfError
from masf_lightning.io import check_writable_dir, write_json_atomic

OFFICIAL_URL = "http://www.inf.ufpr.br/vri/databases/BreaKHis_v1.tar.gz"
ARCHIVE = "BreaKHis_v1.tar.gz"
TREE = "BreaKHis_v1"
STAGING = ".BreaKHis_v1.extracting"
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)")


class _Transient(Exception):
    """A failure worth retrying (timeout, reset, short body, 5xx): the partial file is kept for resuming."""


def manual_steps(url: str, folder: Path) -> str:
    """The by-hand route, appended to every download error."""
    return (
        f"by hand: download {url} in a browser, put {ARCHIVE} in {folder} and run this command again "
        f"(it verifies and extracts it), or extract it there yourself (tar xzf {ARCHIVE} -C {folder})"
    )


def _parse_content_range(value: str | None) -> tuple[int | None, int] | None:
    """(first byte or None for "*", total size) of a Content-Range header, None if absent or unparseable."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if m is None:
        return None
    return (int(m[1]) if m[1] is not None else None), int(m[3])


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON record of ours, None when absent; unreadable means damaged, which the caller reports."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{path} is unreadable; delete it and run again") from None
    return data if isinstance(data, dict) else None


def _bytes_bar(desc: str, total: int | None, progress: bool, initial: int = 0) -> tqdm:
    """Bytes done, rate and ETA on stderr."""
    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
        disable=not progress, dynamic_ncols=True,
    )  # fmt: skip


def _check_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DataError(
            f"{folder} has {free / 2**30:.1f} GiB free; the download needs {need / 2**30:.1f} GiB more"
        )


def _fetch_once(url: str, part: Path, meta_path: Path, timeout: float, progress: bool) -> None:
    """One HTTP request: resume `part` when the server honours Range for the same file, else start over."""
    meta = _read_json(meta_path) or {}
    have = part.stat().st_size if part.is_file() else 0
    if have and meta.get("url") != url:  # a partial file of another address may be another file
        have = 0
    request = Request(url, headers={"User-Agent": "masf-lightning", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
        if meta.get("validator"):  # the server sends the whole (new) file if it changed since
            request.add_header("If-Range", meta["validator"])
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: complete, or stale if the sizes differ
            parsed = _parse_content_range(exc.headers.get("Content-Range"))
            if parsed is not None and parsed[1] == have:
                return
            part.unlink()
            raise _Transient("the server refused to resume the partial file; starting over") from None
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DataError(f"HTTP {exc.code} {exc.reason}") from None
    except URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, ConnectionResetError)):
            raise _Transient(str(reason)) from None
        raise DataError(f"cannot reach the server ({reason})") from None
    except (TimeoutError, ConnectionError) as exc:
        raise _Transient(str(exc) or type(exc).__name__) from None
    with response:
        parsed = _parse_content_range(response.headers.get("Content-Range"))
        if response.status == 206 and (parsed is None or parsed[0] != have):
            part.unlink(missing_ok=True)
            raise _Transient(f"the server answered with another byte range ({parsed}); starting over")
        if response.status == 206:
            mode, total = "ab", parsed[1]
        else:
            if have:  # Range ignored, or If-Range saw a changed file: the body is the whole file
                print(
                    f"{url}: the server sent the whole file instead of the rest; starting over",
                    file=sys.stderr,
                )
            mode, have = "wb", 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            write_json_atomic(meta_path, {"url": url, "total": total, "validator": validator})
        if total is not None:
            _check_space(part.parent, total - have)
        with (
            open(part, mode) as fh,
            _bytes_bar(ARCHIVE, total, progress, initial=have) as bar,
        ):
            try:
                while chunk := response.read(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
            except (OSError, HTTPException) as exc:  # timeout, reset, IncompleteRead of a chunked body
                raise _Transient(f"connection lost ({type(exc).__name__})") from None
            finally:
                fh.flush()
                os.fsync(fh.fileno())
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Transient(f"connection closed after {size:,} of {total:,} bytes")


def fetch(
    url: str,
    dest: Path,
    *,
    retries: int = 3,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> None:
    """Download `url` to `dest` through `dest`.part, retrying transient failures with doubling back-off."""
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, meta_path, timeout, progress)
            break
        except _Transient as exc:
            if attempt == retries:
                kept = part.stat().st_size if part.is_file() else 0
                raise DataError(
                    f"downloading {url} failed after {attempt + 1} attempt(s): {exc}; {kept:,} bytes kept in "
                    f"{part}, run the same command again to resume; {manual_steps(url, dest.parent)}"
                ) from None
            wait = backoff * 2**attempt
            print(f"{url}: {exc}; retrying in {wait:.0f} s", file=sys.stderr)
            time.sleep(wait)
        except DataError as exc:
            raise DataError(f"downloading {url} failed: {exc}; {manual_steps(url, dest.parent)}") from None
    with open(part, "rb") as fh:
        head = fh.read(16)
    if not head.startswith(GZIP_MAGIC):  # an HTML error page or a captive portal: no point resuming it
        part.unlink()
        meta_path.unlink(missing_ok=True)
        raise DataError(
            f"{url} did not serve a gzip archive (the file starts with {head!r}); check the address; "
            f"{manual_steps(url, dest.parent)}"
        )
    os.replace(part, dest)
    meta_path.unlink(missing_ok=True)


def sha256_of(path: Path, progress: bool = True) -> str:
    digest = hashlib.sha256()
    with (
        open(path, "rb") as fh,
        _bytes_bar("sha256", path.stat().st_size, progress) as bar,
    ):
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify_archive(archive: Path, url: str | None, progress: bool = True) -> dict[str, Any]:
    """Check `archive` against its record (size, SHA-256), or record it when it has none (placed by hand)."""
    record_path = archive.with_name(archive.name + ".json")
    record = _read_json(record_path)
    size = archive.stat().st_size
    if record is not None and record.get("size") != size:
        raise DataError(
            f"{archive} has {size} bytes but {record_path.name} recorded {record.get('size')}; "
            "it is damaged: delete both files and run again"
        )
    digest = sha256_of(archive, progress)
    if record is not None and record.get("sha256") != digest:
        raise DataError(
            f"{archive} has SHA-256 {digest} but {record_path.name} recorded {record.get('sha256')}; "
            "it is damaged: delete both files and run again"
        )
    if record is None:
        record = {"file": archive.name, "size": size, "sha256": digest, "url": url}
        write_json_atomic(record_path, record)
    print(f"{archive}: {size:,} bytes, SHA-256 {digest} (recorded in {record_path.name})")
    return record


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why `member` may not be extracted (tarfile's `data` filter rules), or None; checked before writing it."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in Path(name.replace("\\", "/")).parts:
        return "climbs out with '..'"
    if member.isdev():
        return "is a device or FIFO"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith(("/", "\\")):
            return f"is a link to the absolute path {target!r}"
        base = posixpath.dirname(name) if member.issym() else ""
        if posixpath.normpath(posixpath.join(base, target)).split("/")[0] == "..":
            return f"is a link pointing outside the folder ({target!r})"
    return None


def extract(archive: Path, folder: Path, progress: bool = True) -> Path:
    """Extract `archive` into `folder`/BreaKHis_v1 through a staging folder; refuse unsafe members."""
    staging = folder / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run: never complete, never used
    staging.mkdir()
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with (
            open(archive, "rb") as raw,
            tarfile.open(fileobj=raw, mode="r:gz") as tar,
            _bytes_bar("extract", archive.stat().st_size, progress) as bar,
        ):
            for member in tar:
                reason = _refusal(member)
                if reason is not None:
                    raise DataError(
                        f"{archive}: member {member.name!r} {reason}; refused, nothing extracted into {folder}; "
                        "the archive is damaged or not BreaKHis"
                    )
                tar.extract(member, staging, **safe)
                bar.update(raw.tell() - bar.n)
        tree = staging / TREE
        if not tree.is_dir():
            found = sorted(p.name for p in staging.iterdir())[:5]
            raise DataError(
                f"{archive} holds no {TREE} folder (top level: {found}); it is not the BreaKHis archive"
            )
        os.replace(tree, folder / TREE)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        member = getattr(exc, "tarinfo", None)  # tarfile's data filter refused what _refusal let through
        if member is not None:
            raise DataError(
                f"{archive}: member {member.name!r} refused by tarfile's data filter ({exc}); "
                f"nothing extracted into {folder}; the archive is damaged or not BreaKHis"
            ) from None
        raise DataError(
            f"{archive} is truncated or corrupt ({type(exc).__name__}: {exc}); nothing extracted into {folder}; "
            "delete it and run again"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {folder}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / TREE


def prepare(
    folder: Path,
    url: str = OFFICIAL_URL,
    *,
    retries: int = 3,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> None:
    """Make `folder` hold an extracted, verified BreaKHis v1; do nothing more when it already does."""
    check_writable_dir(folder, "DIR")
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / ARCHIVE
    try:
        breast = breakhis.find_breast_dir(folder)
    except DataError:
        breast = None
    if breast is not None:
        print(f"{folder} already holds a BreaKHis tree ({breast}); nothing to download or extract")
        if archive.is_file():
            verify_archive(archive, None, progress)
        return
    if (folder / TREE).exists():  # not ours to replace: it may be a user's partial copy
        raise DataError(
            f"{folder / TREE} exists but holds no BreaKHis tree; move it away or choose another DIR"
        )
    fresh = not archive.is_file()  # else placed by hand, or downloaded by an earlier run
    if fresh:
        print(f"downloading {url} into {folder}")
        fetch(url, archive, retries=retries, backoff=backoff, timeout=timeout, progress=progress)
    verify_archive(archive, url if fresh else None, progress)
    tree = extract(archive, folder, progress)
    print(f"extracted {tree}")


def main(argv: Sequence[str] | None = None) -> int:
    """Download, verify and extract BreaKHis v1 into DIR, then print the index report."""
    parser = argparse.ArgumentParser(prog="python -m masf_lightning.data.download", description=main.__doc__)
    parser.add_argument(
        "dir", type=Path, help="folder to hold BreaKHis_v1.tar.gz and the extracted BreaKHis_v1"
    )
    parser.add_argument(
        "--url", default=OFFICIAL_URL, help=f"archive address, e.g. a mirror (default {OFFICIAL_URL})"
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="retries after a dropped connection (default 3)"
    )
    parser.add_argument(
        "--backoff", type=float, default=2.0, help="seconds before the first retry, doubled each time"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        prepare(
            args.dir,
            args.url,
            retries=args.retries,
            backoff=args.backoff,
            timeout=args.timeout,
            progress=args.progress,
        )
    except MasfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"error: interrupted; run the same command again to resume ({args.dir})", file=sys.stderr)
        return 130
    return breakhis.main([str(args.dir)])


if __name__ == "__main__":
    raise SystemExit(main())
