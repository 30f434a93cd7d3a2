"""Downloads without the internet: an HTTP server on 127.0.0.1 serves a tiny BreaKHis tarball and weight files.

Covers `python -m masf_lightning.data.download` (resume, no-Range servers, corrupt and unsafe archives,
HTTP errors) and the ImageNet weight fetch of `masf_lightning.models.backbones` through a local mirror.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from masf_lightning.data import download
from masf_lightning.data.breakhis import index_breakhis
from masf_lightning.errors import ConfigError
from masf_lightning.models import backbones
from tests.conftest import write_breakhis_tree

NAME = "BreaKHis_v1.tar.gz"


@dataclass
class Served:
    """What the test server holds and how it misbehaves; `requests` logs (path, Range header)."""

    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True
    drops: int = 0  # this many responses stop half-way, then the connection closes
    requests: list[tuple[str, str | None]] = field(default_factory=list)


Server = tuple[Served, str]  # the state and the base URL
Capture = pytest.CaptureFixture[str]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: Served = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, self.headers.get("Range")))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if asked and state.ranges:
            start = int(asked[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        rest = body[start:]
        if state.drops > 0:
            state.drops -= 1
            rest = rest[: len(rest) // 2]  # HTTP/1.0: the connection closes when the handler returns
        self.wfile.write(rest)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = Served()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tarball(src: Path, extra: Sequence[tuple[tarfile.TarInfo, bytes]] = ()) -> bytes:
    """A gzipped BreaKHis_v1 tree (10 patient folders x 4 magnifications x 1 PNG), plus `extra` members."""
    write_breakhis_tree(src, per_mag=1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "BreaKHis_v1", arcname="BreaKHis_v1")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def run(folder: Path, url: str, *args: str) -> int:
    return download.main([str(folder), "--url", url, "--no-progress", "--backoff", "0", *args])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_download_extract_index_then_nothing_to_do(server: Server, tmp_path: Path, capsys: Capture) -> None:
    state, base = server
    state.files["/" + NAME] = data = tarball(tmp_path / "src")
    out = tmp_path / "data"
    assert run(out, base + "/" + NAME) == 0
    printed = capsys.readouterr().out
    assert (out / NAME).read_bytes() == data
    record = json.loads((out / (NAME + ".json")).read_text())
    assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["sha256"] in printed and f"{len(data):,} bytes" in printed
    assert "differs from the official BreaKHis v1 counts (7,909 images, 82 patient folders)" in printed
    assert "images: 40 (official 7,909)" in printed and "patient folders: 10 (official 82)" in printed
    assert len(index_breakhis(out)) == 40
    assert sorted(p.name for p in out.iterdir()) == [
        "BreaKHis_v1",
        NAME,
        NAME + ".json",
    ]  # no .part, no staging
    # second run: verified archive + extracted tree -> no request, nothing written
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert run(out, base + "/" + NAME) == 0
    assert "nothing to download or extract" in capsys.readouterr().out
    assert len(state.requests) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_dropped_connection_resumes_on_next_run(server: Server, tmp_path: Path, capsys: Capture) -> None:
    state, base = server
    state.files["/" + NAME] = data = tarball(tmp_path / "src")
    state.drops = 1
    out = tmp_path / "data"
    assert run(out, base + "/" + NAME, "--retries", "0") == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "run the same command again to resume" in errors[0] and "by hand" in errors[0]
    half = len(data) // 2
    assert (out / (NAME + ".part")).read_bytes() == data[:half]
    assert not (out / NAME).exists() and not (out / "BreaKHis_v1").exists()
    assert run(out, base + "/" + NAME) == 0
    assert state.requests[-1] == ("/" + NAME, f"bytes={half}-")
    assert (out / NAME).read_bytes() == data
    assert len(index_breakhis(out)) == 40


def test_retries_resume_within_one_run(server: Server, tmp_path: Path) -> None:
    state, base = server
    state.files["/" + NAME] = data = tarball(tmp_path / "src")
    state.drops = 2
    out = tmp_path / "data"
    assert run(out, base + "/" + NAME, "--retries", "2") == 0
    half, quarter = len(data) // 2, (len(data) - len(data) // 2) // 2
    assert [r for _, r in state.requests] == [None, f"bytes={half}-", f"bytes={half + quarter}-"]
    assert (out / NAME).read_bytes() == data


def test_server_without_range_starts_over(server: Server, tmp_path: Path, capsys: Capture) -> None:
    state, base = server
    state.files["/" + NAME] = data = tarball(tmp_path / "src")
    state.ranges, state.drops = False, 1
    out = tmp_path / "data"
    assert run(out, base + "/" + NAME, "--retries", "0") == 2
    assert run(out, base + "/" + NAME, "--retries", "0") == 0
    assert state.requests[-1][1] == f"bytes={len(data) // 2}-"  # asked to resume, got the whole file
    assert "starting over" in capsys.readouterr().err
    assert (out / NAME).read_bytes() == data


def test_partial_file_of_another_address_is_not_resumed(server: Server, tmp_path: Path) -> None:
    state, base = server
    state.files["/a/" + NAME] = state.files["/b/" + NAME] = data = tarball(tmp_path / "src")
    state.drops = 1
    out = tmp_path / "data"
    assert run(out, f"{base}/a/{NAME}", "--retries", "0") == 2
    assert run(out, f"{base}/b/{NAME}") == 0
    assert state.requests[-1] == (f"/b/{NAME}", None)
    assert (out / NAME).read_bytes() == data


@pytest.mark.parametrize("kind", ["not_gzip", "truncated", "size_differs_from_record"])
def test_corrupt_archive_is_refused_and_nothing_extracted(
    kind: str, server: Server, tmp_path: Path, capsys: Capture
) -> None:
    state, base = server
    data = tarball(tmp_path / "src")
    out = tmp_path / "data"
    if kind == "not_gzip":
        state.files["/" + NAME] = b"<html>mirror moved</html>"
    elif kind == "truncated":
        state.files["/" + NAME] = data[: len(data) * 2 // 3]
    else:  # a copy cut short after it was recorded
        state.files["/" + NAME] = data
        assert run(out, base + "/" + NAME) == 0
        (out / NAME).write_bytes(data[:-10])
        (out / "BreaKHis_v1").rename(tmp_path / "moved")
    capsys.readouterr()
    assert run(out, base + "/" + NAME) == 2
    errors = error_lines(capsys.readouterr().err)
    want = {
        "not_gzip": "did not serve a gzip archive",
        "truncated": "truncated or corrupt",
        "size_differs_from_record": f"has {len(data) - 10} bytes but {NAME}.json recorded {len(data)}",
    }
    assert len(errors) == 1 and want[kind] in errors[0], errors
    assert not (out / "BreaKHis_v1").exists() and not (out / download.STAGING).exists()
    if kind == "not_gzip":
        assert not (out / NAME).exists() and not (out / (NAME + ".part")).exists()


def _bad_member(kind: str, outside: Path) -> tuple[tarfile.TarInfo, bytes]:
    payload = b"pwned"
    if kind == "dotdot":
        info = tarfile.TarInfo("BreaKHis_v1/../../outside/evil.txt")
    elif kind == "absolute":
        info = tarfile.TarInfo(str(outside / "evil.txt"))
    else:
        info = tarfile.TarInfo("BreaKHis_v1/escape")
        info.type, info.linkname, payload = tarfile.SYMTYPE, "../../outside", b""
    info.size = len(payload)
    return info, payload


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_member_is_refused_and_nothing_written(
    kind: str, server: Server, tmp_path: Path, capsys: Capture
) -> None:
    state, base = server
    outside = tmp_path / "outside"
    info, payload = _bad_member(kind, outside)
    state.files["/" + NAME] = tarball(tmp_path / "src", [(info, payload)])
    out = tmp_path / "data"
    assert run(out, base + "/" + NAME) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and repr(info.name) in errors[0] and "refused" in errors[0], errors
    assert not outside.exists()
    assert sorted(p.name for p in out.iterdir()) == [NAME, NAME + ".json"]  # no tree, no staging


def test_http_404_is_one_line(server: Server, tmp_path: Path, capsys: Capture) -> None:
    _, base = server
    assert run(tmp_path / "data", base + "/missing.tar.gz") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "HTTP 404" in err and "by hand" in err


def test_offline_is_one_line_without_retrying(
    tmp_path: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_retry(seconds: float) -> None:
        raise AssertionError("retried an unreachable server")

    monkeypatch.setattr(download.time, "sleep", no_retry)
    assert run(tmp_path / "data", f"http://127.0.0.1:{closed_port()}/{NAME}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the server" in err and "by hand" in err


def test_existing_tree_needs_no_network(tmp_path: Path, capsys: Capture) -> None:
    write_breakhis_tree(
        tmp_path, prefix=("BreaKHis_v1", "BreaKHis_v1", "histology_slides", "breast")
    )  # Kaggle copy
    assert run(tmp_path, f"http://127.0.0.1:{closed_port()}/{NAME}") == 0
    assert "nothing to download" in capsys.readouterr().out


def test_archive_by_hand_and_a_killed_extraction(tmp_path: Path) -> None:
    """An archive put in DIR by hand is recorded and extracted offline; a staging folder left by a killed
    extraction (a half tree) is neither taken for the data nor kept."""
    out = tmp_path / "data"
    (out / download.STAGING / "BreaKHis_v1" / "histology_slides" / "breast" / "benign").mkdir(parents=True)
    (out / NAME).write_bytes(tarball(tmp_path / "src"))
    assert run(out, f"http://127.0.0.1:{closed_port()}/{NAME}") == 0
    assert json.loads((out / (NAME + ".json")).read_text())["url"] is None
    assert not (out / download.STAGING).exists() and len(index_breakhis(out)) == 40


def test_foreign_folder_is_not_replaced(tmp_path: Path, capsys: Capture) -> None:
    (tmp_path / "BreaKHis_v1").mkdir()
    (tmp_path / "BreaKHis_v1" / "notes.txt").write_text("mine")
    assert run(tmp_path, f"http://127.0.0.1:{closed_port()}/{NAME}") == 2
    assert "holds no BreaKHis tree" in capsys.readouterr().err
    assert (tmp_path / "BreaKHis_v1" / "notes.txt").read_text() == "mine"


# -- ImageNet weights through the torch hub cache ------------------------------------------------------------


def _weight_file() -> tuple[str, bytes]:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf)
    data = buf.getvalue()
    return f"/tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth", data


def test_weights_download_into_hub_cache(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, base = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    name, data = _weight_file()
    state.files[name] = data
    path = backbones.fetch_weights(base + name, progress=False)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / name[1:] and path.read_bytes() == data
    assert backbones.fetch_weights(base + name, progress=False) == path and len(state.requests) == 1


def test_weights_with_a_wrong_hash_never_reach_the_cache(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, base = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _, data = _weight_file()
    state.files["/tiny-deadbeef.pth"] = data
    with pytest.raises(ConfigError, match="SHA-256 does not start with deadbeef"):
        backbones.fetch_weights(base + "/tiny-deadbeef.pth", progress=False)
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []


def test_imagenet_weights_unavailable_is_one_line(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, base = server
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(backbones.WEIGHTS_URL_ENV, base)  # a mirror without the file: HTTP 404
    with pytest.raises(ConfigError) as err:
        backbones.alexnet()
    msg = str(err.value)
    assert state.requests == [("/alexnet-owt-7be5be79.pth", None)]
    assert "\n" not in msg and "alexnet-owt-7be5be79.pth" in msg and str(folder) in msg and "404" in msg
    monkeypatch.setenv(backbones.WEIGHTS_URL_ENV, f"http://127.0.0.1:{closed_port()}")  # offline
    with pytest.raises(ConfigError, match="resnet18-f37072fd.pth is not in"):
        backbones.resnet18()


def test_make_weights(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    state, base = server
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(backbones.WEIGHTS_URL_ENV, base)
    assert backbones.download_main() == 2
    assert len(error_lines(capsys.readouterr().err)) == 1
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("alexnet-owt-7be5be79.pth", "resnet18-f37072fd.pth"):
        (folder / name).write_bytes(b"already here")
    assert backbones.download_main() == 0
    assert capsys.readouterr().out.count(str(folder)) == 2 and len(state.requests) == 1
