"""Files a process of ours keeps only while it works -- spilled tracking results, an output
being written -- and their removal after the process was killed.

Each such file or folder is named with its owner's tag, ``<pid>-<start stamp>`` (the stamp
tells a live owner from a new process that got the same pid), and listed in a record of the
owner in the cache (``$NAPARI_SAM2_CACHE/running/<tag>.json``), so that files next to an
output are found as well as those in the temporary folder. At start-up the command line, the
API and the widget call :func:`remove_stale`: what belongs to a process that is gone is
removed. A live process's files are never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from functools import cache
from pathlib import Path

__all__ = ["forget", "is_alive", "owner_tag", "register", "remove_stale", "stale_owner"]

logger = logging.getLogger(__name__)

PREFIX = "napari-sam2-"  # our folders in the temporary folder: napari-sam2-<tag>-<random>
_LOCK = threading.Lock()
_CHECKED = False


def _start_stamp(pid: int) -> int | None:
    """When process ``pid`` started (milliseconds since the epoch), ``None`` if it is gone."""
    try:
        import psutil

        return int(psutil.Process(pid).create_time() * 1000)
    except Exception:  # noqa: BLE001 - no such process, or no access to it
        return None


@cache
def owner_tag() -> str:
    """This process's tag, ``"<pid>-<start stamp>"``."""
    pid = os.getpid()
    return f"{pid}-{_start_stamp(pid) or 0}"


def is_alive(tag: str) -> bool:
    """Whether the process that made ``tag`` still runs (unknown tags count as alive)."""
    try:
        pid_text, stamp_text = tag.split("-", 1)
        pid, stamp = int(pid_text), int(stamp_text)
    except ValueError:
        return True
    now = _start_stamp(pid)
    return now is not None and (stamp == 0 or abs(now - stamp) <= 1000)


def stale_owner(name: str, prefix: str) -> str | None:
    """The tag in ``name`` (``<prefix><pid>-<stamp>-...``) if its process is gone."""
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix):].split("-")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    tag = f"{parts[0]}-{parts[1]}"
    return None if is_alive(tag) else tag


def _records() -> Path:
    from ..models.download import cache_dir

    return cache_dir() / "running"


def _record(tag: str) -> Path:
    return _records() / f"{tag}.json"


def _read(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            paths = json.load(f).get("paths", [])
        return [str(p) for p in paths]
    except (OSError, ValueError, AttributeError):
        return []


def _write(path: Path, paths: list[str]) -> None:
    if not paths:
        with contextlib.suppress(OSError):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"paths": paths}, f)
    os.replace(tmp, path)


def register(path: str | os.PathLike) -> None:
    """List ``path`` (a file or folder this process removes when done) in its record, so
    that it is removed if the process is killed first. Best effort: never raises."""
    with _LOCK:
        try:
            record = _record(owner_tag())
            paths = _read(record)
            if str(path) not in paths:
                _write(record, [*paths, str(path)])
        except OSError as err:
            logger.debug("could not record %s: %s", path, err)


def forget(path: str | os.PathLike) -> None:
    """``path`` was removed or kept for good: take it off this process's record."""
    with _LOCK:
        try:
            record = _record(owner_tag())
            _write(record, [p for p in _read(record) if p != str(path)])
        except OSError as err:
            logger.debug("could not update the record of %s: %s", path, err)


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            return False
        return True
    except OSError as err:
        logger.warning("could not remove %s left by a stopped process: %s", path, err)
        return False


def remove_stale(force: bool = False) -> list[Path]:
    """Remove the files and folders of our processes that are gone: those their records
    list, and our folders in the temporary folder. Once per process unless ``force``.
    Returns what was removed."""
    global _CHECKED
    with _LOCK:
        if _CHECKED and not force:
            return []
        _CHECKED = True
    removed: list[Path] = []
    try:
        records = list(_records().glob("*.json"))
    except OSError:
        records = []
    for record in records:
        tag = record.stem
        if is_alive(tag):
            continue
        for name in _read(record):
            if _remove(Path(name)):
                removed.append(Path(name))
        with contextlib.suppress(OSError):
            record.unlink()
    temp = Path(tempfile.gettempdir())
    try:
        entries = list(os.scandir(temp))
    except OSError:
        entries = []
    for entry in entries:
        if stale_owner(entry.name, PREFIX) is not None and _remove(Path(entry.path)):
            removed.append(Path(entry.path))
    if removed:
        logger.info("removed %d file(s) left by stopped napari-sam2 processes", len(removed))
    return removed
