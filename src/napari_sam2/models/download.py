"""Download and cache SAM 2 checkpoint files.

Checkpoints are fetched with pooch's :class:`~pooch.HTTPDownloader` (a tqdm
progress bar on stderr, or any tqdm-like object such as ``napari.utils.progress``)
into ``<cache>/.<filename>.<random>.part`` and only moved to ``<cache>/<filename>``
once the transfer is complete and its size and hash have been checked, so no
half-written checkpoint is ever left under its final name.  Whatever goes wrong
(HTTP error, dropped connection, size or hash mismatch, ``KeyboardInterrupt``,
full disk) the partial file is removed.  Concurrent downloads of the same file by
several processes are serialised with a lock file (POSIX only), and the process
that waits reuses the file the first one downloaded.

The registry of official checkpoints lives elsewhere (``checkpoints.py``); this
module only knows about URLs, file names, sizes and hashes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pooch

__all__ = [
    "CACHE_ENV_VAR",
    "CheckpointDownloadError",
    "CheckpointIntegrityError",
    "ProgressBar",
    "cache_dir",
    "fetch_checkpoint",
]

CACHE_ENV_VAR = "NAPARI_SAM2_CACHE"
"""Environment variable that overrides the checkpoint cache directory."""

_CHUNK_SIZE = 1024 * 1024  # bytes per read; pooch's default (1 KiB) is slow for 900 MB
_TIMEOUT = 60.0  # seconds without any data (connect or read) before giving up

_log = logging.getLogger(__name__)


class CheckpointDownloadError(RuntimeError):
    """A checkpoint could not be downloaded (network, HTTP or disk error)."""


class CheckpointIntegrityError(CheckpointDownloadError):
    """A downloaded checkpoint had the wrong size or hash; it was deleted."""


class ProgressBar(Protocol):
    """The tqdm-like interface pooch drives (``napari.utils.progress`` fits)."""

    total: Any

    def update(self, n: int = 1) -> Any: ...

    def reset(self) -> Any: ...

    def close(self) -> Any: ...


def cache_dir() -> Path:
    """Return the directory checkpoints are cached in (not created here).

    ``$NAPARI_SAM2_CACHE`` if set and non-empty, else the per-user cache
    directory of the OS (``pooch.os_cache("napari-sam2")``, e.g.
    ``~/.cache/napari-sam2`` on Linux).
    """
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(pooch.os_cache("napari-sam2"))


def fetch_checkpoint(
    url: str,
    filename: str,
    *,
    known_hash: str | None = None,
    expected_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | ProgressBar = True,
) -> Path:
    """Return the local path of a checkpoint, downloading it if needed.

    Parameters
    ----------
    url
        ``http(s)://`` URL of the file (``file://`` URLs are copied).
    filename
        Bare file name under which it is cached, e.g. ``"sam2.1_hiera_tiny.pt"``.
    known_hash
        Expected hash, ``"<alg>:<hex>"`` (e.g. ``"sha256:..."``) or a bare
        SHA-256 hex digest, as in pooch.  ``None`` skips the hash check.
    expected_size
        Expected size in bytes.  ``None`` skips the size check.
    cache_dir
        Directory to cache into; default :func:`cache_dir`.
    progress
        ``True`` for a tqdm progress bar on stderr, ``False`` for none, or a
        tqdm-like object (e.g. ``napari.utils.progress``) to drive; pooch
        closes such an object when the download succeeds.

    Returns
    -------
    pathlib.Path
        Path of the verified file.  A cached file that passes the size and hash
        checks is returned without any network access; one that fails them is
        deleted and downloaded again.

    Raises
    ------
    CheckpointIntegrityError
        The downloaded file had the wrong size or hash (it has been deleted).
    CheckpointDownloadError
        The file could not be downloaded or written.  ``KeyboardInterrupt``
        propagates unchanged; in every case no partial file is left behind.
    """
    if not filename or Path(filename).name != filename or filename in (".", ".."):
        raise ValueError(f"filename must be a bare file name, got {filename!r}")
    directory = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    target = directory / filename
    if _is_valid(target, known_hash, expected_size):
        return target

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointDownloadError(
            f"could not create the checkpoint cache directory {directory}: {err}. "
            f"Set {CACHE_ENV_VAR} to a writable directory."
        ) from err

    with _file_lock(directory / f".{filename}.lock"):
        # Another process may have finished the download while we waited.
        if _is_valid(target, known_hash, expected_size):
            return target
        _remove_stale_parts(directory, filename)
        if target.exists():
            _log.warning("Cached %s is invalid; downloading it again.", target)
            target.unlink()
        _download(url, target, known_hash, expected_size, progress)
    return target


def _default_cache_dir() -> Path:
    # ``fetch_checkpoint``'s ``cache_dir`` parameter shadows the public function.
    return cache_dir()


def _split_hash(known_hash: str) -> tuple[str, str]:
    """Split ``"alg:hex"`` (or bare SHA-256 hex) into ``(alg, hex)``."""
    alg, sep, value = known_hash.partition(":")
    if not sep:
        return "sha256", known_hash.strip().lower()
    return alg.strip().lower(), value.strip().lower()


_VERIFIED = ".verified.json"  # in the cache folder: files whose hash was checked


def _is_valid(path: Path, known_hash: str | None, expected_size: int | None) -> bool:
    """Whether ``path`` exists and has the expected size and hash.

    A file's hash is computed once: the result is remembered (in ``.verified.json`` beside
    it) with the file's size and modification time, so loading a 900 MB checkpoint again
    does not read it twice; a file that is replaced or touched is hashed again.
    """
    try:
        if not path.is_file():
            return False
        stat = path.stat()
        if expected_size is not None and stat.st_size != expected_size:
            return False
        if known_hash is None:
            return True
        alg, value = _split_hash(known_hash)
        seen = [stat.st_size, stat.st_mtime_ns, f"{alg}:{value}"]
        memo = _read_verified(path.parent)
        if memo.get(path.name) == seen:
            return True
        if pooch.file_hash(str(path), alg=alg) != value:
            return False
        memo[path.name] = seen
        _write_verified(path.parent, memo)
        return True
    except OSError:
        return False


def _read_verified(directory: Path) -> dict[str, Any]:
    try:
        with open(directory / _VERIFIED, encoding="utf-8") as f:
            memo = json.load(f)
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_verified(directory: Path, memo: dict[str, Any]) -> None:
    """Best effort (a read-only cache just hashes again next time); atomic."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_VERIFIED}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(memo, f)
        os.replace(tmp, directory / _VERIFIED)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


def _download(
    url: str,
    target: Path,
    known_hash: str | None,
    expected_size: int | None,
    progress: bool | ProgressBar,
) -> None:
    """Download ``url`` into ``target`` via a verified ``.part`` file."""
    import requests  # lazy: a pooch dependency, slow-ish to import

    name = target.name
    help_ = (
        f"Check your internet connection and try again, or download the file "
        f"yourself and put it at {target} (or set {CACHE_ENV_VAR} to the folder "
        f"that contains it)."
    )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    is_file_url = urllib.parse.urlparse(url).scheme == "file"
    bar, own_bar = _make_progress(False if is_file_url else progress, name, expected_size)
    try:
        try:
            if is_file_url:
                _copy_file_url(url, tmp)
            else:
                downloader = pooch.HTTPDownloader(
                    progressbar=bar if bar is not None else False,
                    chunk_size=_CHUNK_SIZE,
                    timeout=_TIMEOUT,
                )
                downloader(url, str(tmp), None)
        except requests.exceptions.HTTPError as err:
            resp = err.response
            if resp is not None:
                resp.close()  # pooch streams and never closes it on errors
            reason = f"HTTP {resp.status_code} {resp.reason}" if resp is not None else str(err)
            raise CheckpointDownloadError(
                f"could not download {name} from {url}: {reason}. {help_}"
            ) from err
        except requests.exceptions.RequestException as err:
            reason = _reason(err)
            raise CheckpointDownloadError(
                f"could not download {name} from {url}: {reason}. {help_}"
            ) from err
        except OSError as err:
            raise CheckpointDownloadError(
                f"could not download {name} from {url} into {target.parent}: {err}. "
                f"Free some disk space or set {CACHE_ENV_VAR} to another directory."
            ) from err

        size = tmp.stat().st_size
        if expected_size is not None and size != expected_size:
            raise CheckpointIntegrityError(
                f"downloaded {name} from {url} has the wrong size: expected "
                f"{expected_size} bytes, got {size} (transfer cut short or file "
                f"changed on the server). The downloaded file was removed. {help_}"
            )
        if known_hash is not None:
            alg, value = _split_hash(known_hash)
            got = pooch.file_hash(str(tmp), alg=alg)
            if got != value:
                raise CheckpointIntegrityError(
                    f"downloaded {name} from {url} is corrupted: expected {alg} "
                    f"{value}, got {got}. The corrupted file was removed. {help_}"
                )
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; keep shared caches readable
        os.replace(tmp, target)
        if known_hash is not None:  # checked just now: not read again on first use
            stat = target.stat()
            memo = _read_verified(target.parent)
            memo[name] = [stat.st_size, stat.st_mtime_ns, f"{alg}:{value}"]
            _write_verified(target.parent, memo)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if own_bar and bar is not None:
            bar.close()


def _reason(err: BaseException) -> str:
    """Readable cause of a requests error (unwraps ``(message, exc)`` chains)."""
    while err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    return err.args[0] if err.args and isinstance(err.args[0], str) else str(err)


def _make_progress(
    progress: bool | ProgressBar, name: str, total: int | None
) -> tuple[_TruthyBar | None, bool]:
    """Return ``(bar, created_here)``; we create (and close) tqdm bars ourselves.

    Creating the bar here rather than passing ``progressbar=True`` to pooch
    lets us close it when the transfer fails (pooch leaves it open then).
    """
    if progress is False or progress is None:
        return None, False
    if progress is not True:
        return _TruthyBar(progress), False
    if sys.stderr is None:  # e.g. pythonw / frozen GUI apps: nowhere to draw
        return None, False
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        ascii=sys.platform == "win32",
        leave=True,
    )
    return _TruthyBar(bar), True


class _TruthyBar:
    """Forward to a progress bar, but always be truthy.

    pooch tests ``if self.progressbar:`` before every update, and a tqdm bar
    whose total is 0 (no Content-Length yet) is falsy, so pooch would silently
    skip it.  Unknown totals (0) are also passed on as ``None``.
    """

    def __init__(self, bar: ProgressBar) -> None:
        self._bar = bar

    def __bool__(self) -> bool:
        return True

    @property
    def total(self) -> Any:
        return self._bar.total

    @total.setter
    def total(self, value: Any) -> None:
        self._bar.total = value or None

    def update(self, n: int = 1) -> Any:
        return self._bar.update(n)

    def reset(self) -> Any:
        return self._bar.reset()

    def close(self) -> Any:
        return self._bar.close()


def _copy_file_url(url: str, dest: Path) -> None:
    """Copy the file a ``file://`` URL points to into ``dest``."""
    parsed = urllib.parse.urlparse(url)
    shutil.copyfile(urllib.request.url2pathname(parsed.path), dest)


def _remove_stale_parts(directory: Path, filename: str) -> None:
    """Delete ``.part`` files a killed process left (call with the lock held)."""
    for part in directory.glob(f".{glob.escape(filename)}.*.part"):
        with contextlib.suppress(OSError):
            part.unlink()
            _log.info("Removed stale partial download %s", part)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; removed again on release.

    No-op where ``fcntl`` is unavailable (Windows).  The inode check makes the
    delete-on-release safe: a process that locked a file we already unlinked
    notices and retries on the new one.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _log.info("Waiting for another process to finish downloading (%s)", path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
