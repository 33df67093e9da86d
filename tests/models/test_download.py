"""Tests for napari_sam2.models.download against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pooch
import pytest
import tqdm

from napari_sam2.models import download
from napari_sam2.models.download import (
    CACHE_ENV_VAR,
    CheckpointDownloadError,
    CheckpointIntegrityError,
    cache_dir,
    fetch_checkpoint,
)

PAYLOAD = bytes(range(256)) * 24  # 6 KiB
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
NAME = "sam2.1_hiera_test.pt"


class _LoopbackServer(http.server.ThreadingHTTPServer):
    """Skip HTTPServer's reverse-DNS ``getfqdn`` (slow without a network)."""

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Server:
    """A threaded HTTP server on 127.0.0.1 that counts the requests it gets."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                with outer._lock:
                    outer.hits.append(self.path)
                route = self.path.split("/")[1]
                if route == "missing":
                    self.send_error(404, "Not Found")
                    return
                if route == "slow":
                    time.sleep(0.3)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                if route == "truncated":  # announce everything, send half, hang up
                    self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(PAYLOAD)

        self.httpd = _LoopbackServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, route: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{route}/{NAME}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure requests talks to the loopback server directly."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _contents(directory: Path) -> list[str]:
    """Everything in ``directory`` (hidden files included)."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_with_progress_bar(server: _Server, cache: Path, capsys) -> None:
    path = fetch_checkpoint(
        server.url("ok"), NAME, known_hash=f"sha256:{SHA256}",
        expected_size=len(PAYLOAD), cache_dir=cache,
    )
    assert path == cache / NAME
    assert path.read_bytes() == PAYLOAD
    assert _contents(cache) == [".verified.json", NAME]  # no .part / .lock leftovers
    err = capsys.readouterr().err
    assert NAME in err and "100%" in err  # tqdm bar drawn on stderr


def test_custom_progress_bar_is_driven(server: _Server, cache: Path) -> None:
    # A tqdm-like bar with total 0 is falsy; pooch alone would silently skip it.
    bar = tqdm.tqdm(total=0, file=io.StringIO())
    fetch_checkpoint(server.url("ok"), NAME, cache_dir=cache, progress=bar)
    assert bar.total == len(PAYLOAD) and bar.n == len(PAYLOAD)


def test_cached_file_is_reused_without_request(server: _Server, cache: Path, capsys) -> None:
    kwargs = dict(known_hash=SHA256, expected_size=len(PAYLOAD), cache_dir=cache, progress=False)
    first = fetch_checkpoint(server.url("ok"), NAME, **kwargs)
    second = fetch_checkpoint(server.url("ok"), NAME, **kwargs)
    assert first == second
    assert len(server.hits) == 1
    assert capsys.readouterr().err == ""  # progress=False draws nothing


def test_corrupted_cached_file_is_downloaded_again(server: _Server, cache: Path) -> None:
    cache.mkdir()
    (cache / NAME).write_bytes(b"\0" * len(PAYLOAD))  # right size, wrong bytes
    path = fetch_checkpoint(
        server.url("ok"), NAME, known_hash=SHA256, cache_dir=cache, progress=False
    )
    assert path.read_bytes() == PAYLOAD
    assert len(server.hits) == 1


def test_hash_mismatch(server: _Server, cache: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(CheckpointIntegrityError) as info:
        fetch_checkpoint(
            server.url("ok"), NAME, known_hash=f"sha256:{wrong}", cache_dir=cache, progress=False
        )
    msg = str(info.value)
    assert wrong in msg and SHA256 in msg and "removed" in msg and NAME in msg
    assert _contents(cache) == []
    assert len(server.hits) == 1


def test_size_mismatch(server: _Server, cache: Path) -> None:
    with pytest.raises(CheckpointIntegrityError, match="wrong size"):
        fetch_checkpoint(
            server.url("ok"),
            NAME,
            expected_size=len(PAYLOAD) + 1,
            cache_dir=cache,
            progress=False,
        )
    assert _contents(cache) == []


@pytest.mark.parametrize("expected_size", [None, len(PAYLOAD)])
def test_connection_dropped_mid_transfer(
    server: _Server, cache: Path, expected_size: int | None
) -> None:
    with pytest.raises(CheckpointDownloadError, match=f"could not download {NAME}"):
        fetch_checkpoint(
            server.url("truncated"), NAME, expected_size=expected_size, cache_dir=cache
        )
    assert _contents(cache) == []


def test_keyboard_interrupt_mid_transfer(
    server: _Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "_CHUNK_SIZE", 1024)  # several chunks
    seen_parts: list[int] = []
    original_update = tqdm.tqdm.update

    def interrupting_update(self, n=1):  # second chunk: data already on disk
        original_update(self, n)
        if self.n > 1024:
            seen_parts.extend(p.stat().st_size for p in cache.glob("*.part"))
            raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.tqdm, "update", interrupting_update)
    with pytest.raises(KeyboardInterrupt):
        fetch_checkpoint(server.url("ok"), NAME, known_hash=SHA256, cache_dir=cache)
    assert seen_parts and seen_parts[0] > 0  # a partial file existed ...
    assert _contents(cache) == []  # ... and is gone, lock file too


def test_http_404(server: _Server, cache: Path) -> None:
    with pytest.raises(CheckpointDownloadError, match="404") as info:
        fetch_checkpoint(server.url("missing"), NAME, cache_dir=cache, progress=False)
    assert str(cache / NAME) in str(info.value)  # tells where to put the file
    assert not isinstance(info.value, CheckpointIntegrityError)
    assert _contents(cache) == []


def test_connection_refused(cache: Path) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(CheckpointDownloadError, match="connection"):
        fetch_checkpoint(f"http://127.0.0.1:{port}/{NAME}", NAME, cache_dir=cache, progress=False)
    assert _contents(cache) == []


def test_cache_dir_env_var(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    assert cache_dir() == Path(pooch.os_cache("napari-sam2"))
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    assert cache_dir() == tmp_path / "env-cache"
    path = fetch_checkpoint(server.url("ok"), NAME, known_hash=SHA256, progress=False)
    assert path == tmp_path / "env-cache" / NAME
    assert path.read_bytes() == PAYLOAD


def test_stale_partial_files_are_removed(server: _Server, cache: Path) -> None:
    cache.mkdir()
    (cache / f".{NAME}.abc123.part").write_bytes(b"half")  # left by a killed process
    (cache / "other.pt").write_bytes(b"x")  # unrelated files are kept
    fetch_checkpoint(server.url("ok"), NAME, cache_dir=cache, progress=False)
    assert _contents(cache) == sorted([NAME, "other.pt"])


@pytest.mark.skipif(sys.platform == "win32", reason="download lock is POSIX-only")
def test_concurrent_downloads_fetch_once(server: _Server, cache: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(
                fetch_checkpoint(
                    server.url("slow"), NAME, known_hash=SHA256, cache_dir=cache, progress=False
                )
            )
        except BaseException as err:  # noqa: BLE001 - reported below  # pragma: no cover
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors
    assert results == [cache / NAME] * 2
    assert len(server.hits) == 1
    assert _contents(cache) == [".verified.json", NAME]


def test_file_url(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "src.pt"
    src.write_bytes(PAYLOAD)
    path = fetch_checkpoint(src.as_uri(), NAME, known_hash=SHA256, cache_dir=cache, progress=False)
    assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("bad", ["", "..", "sub/x.pt", "/abs/x.pt"])
def test_filename_must_be_bare(bad: str, cache: Path) -> None:
    with pytest.raises(ValueError):
        fetch_checkpoint("http://127.0.0.1:1/x", bad, cache_dir=cache)


def test_a_verified_file_is_hashed_again_only_when_it_changes(
    server: _Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    hashed: list[str] = []
    real = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda p, alg: hashed.append(p) or real(p, alg=alg))
    kwargs = dict(known_hash=SHA256, expected_size=len(PAYLOAD), cache_dir=cache, progress=False)
    path = fetch_checkpoint(server.url("ok"), NAME, **kwargs)
    assert len(hashed) == 1  # the download
    for _ in range(3):
        fetch_checkpoint(server.url("ok"), NAME, **kwargs)
    assert len(hashed) == 1 and len(server.hits) == 1  # remembered by size and mtime
    path.write_bytes(b"\0" * len(PAYLOAD))  # replaced in place: same size, new mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert fetch_checkpoint(server.url("ok"), NAME, **kwargs).read_bytes() == PAYLOAD
    # caught (checked before and again under the download lock), fetched again, checked
    assert len(hashed) == 4 and len(server.hits) == 2


def test_official_checkpoints_are_pinned_and_a_mismatch_is_refused(
    server: _Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from napari_sam2.models import checkpoints

    for info in checkpoints.REGISTRY.values():
        assert len(info.sha256 or "") == 64 and info.size and info.size > 100e6, info
    assert checkpoints.REGISTRY["sam2.1_hiera_tiny"].sha256 == (
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69")
    # the official tiny file, served by a local server that hands out other bytes (of the
    # pinned size scaled down: the digest is what must catch it)
    info = checkpoints.REGISTRY["sam2.1_hiera_tiny"]
    url = server.url("ok").rsplit("/", 1)[0] + "/sam2.1_hiera_tiny.pt"
    served = dataclasses.replace(info, url=url, size=len(PAYLOAD))
    monkeypatch.setitem(checkpoints.REGISTRY, "sam2.1_hiera_tiny", served)
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(cache))
    with pytest.raises(CheckpointIntegrityError) as info_:
        checkpoints.checkpoint_path("sam2.1_hiera_tiny", progress=False)
    message = str(info_.value)
    assert "sam2.1_hiera_tiny.pt" in message and info.sha256 in message
    assert "removed" in message and "try again" in message
    assert [p for p in _contents(cache) if p.endswith(".pt") or ".part" in p] == []

