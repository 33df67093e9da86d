"""The zarr store itself: exact round trips, per-frame validity, keys side by side, foreign
and damaged paths, read-only stores."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch

from napari_sam2.core.store.embedding_store import EmbeddingStore, StoreError
from napari_sam2.core.store.key import StoreKey
from napari_sam2.core.store.signature import digest, frame_signature, signature_words


def key(**changes) -> StoreKey:
    values = dict(encoder={"weights": "w1", "settings": {"image_size": 256}}, precision="fp32",
                  input="video", normalization=None, frame_shape=(8, 8), num_frames=4)
    values.update(changes)
    return StoreKey(**values)


def levels(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    channels_last = torch.randn(1, 6, 8, 8, generator=g).to(memory_format=torch.channels_last)
    return [channels_last, torch.randn(1, 8, 4, 4, generator=g).bfloat16(),
            torch.randn(1, 4, 2, 2, generator=g).half()]


POS = ["float32", "bfloat16", "float32"]


def test_signatures_name_content_dtype_and_shape():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert frame_signature(a) == frame_signature(a.copy())
    assert frame_signature(a) == frame_signature(np.asfortranarray(a))  # layout is not content
    b = a.copy()
    b[1, 2] += 1
    assert frame_signature(b) != frame_signature(a)
    assert frame_signature(a.astype(np.int16)) != frame_signature(a)
    assert frame_signature(a.reshape(4, 3)) != frame_signature(a)
    words = signature_words(frame_signature(a))
    assert words.dtype == np.uint64 and words.shape == (2,) and words.all()
    assert digest({"a": 1, "b": [2]}) == digest({"b": [2], "a": 1}) != digest({"a": 2})
    assert key().digest == key(labels={"model": "other name"}).digest
    assert key().digest != key(precision="bf16").digest


def test_round_trip_is_exact_in_dtype_and_layout(tmp_path):
    store = EmbeddingStore.open(tmp_path / "s.zarr", key())
    sig = frame_signature(np.zeros((8, 8)))
    assert store.read(1, sig) is None and not store.has(1, sig)
    written = levels()
    assert store.write(1, sig, written, POS)
    back = store.read(1, sig)
    for a, b in zip(back, written):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a, b)
    assert store.complete().tolist() == [False, True, False, False]
    assert [m["positions"] for m in store.levels] == POS
    other = frame_signature(np.ones((8, 8)))
    assert store.read(1, other) is None  # another frame's pixels: never used
    # a second handle (another session) sees the same
    again = EmbeddingStore.open(tmp_path / "s.zarr", key())
    assert all(torch.equal(a, b) for a, b in zip(again.read(1, sig), written))


def test_rewriting_a_frame_replaces_it(tmp_path):
    store = EmbeddingStore.open(tmp_path / "s.zarr", key())
    old, new = frame_signature(np.zeros(3)), frame_signature(np.ones(3))
    store.write(0, old, levels(0), POS)
    store.write(0, new, levels(1), POS)
    assert store.read(0, old) is None
    assert all(torch.equal(a, b) for a, b in zip(store.read(0, new), levels(1)))


def test_keys_live_side_by_side(tmp_path):
    path = tmp_path / "s.zarr"
    sig = frame_signature(np.zeros(3))
    EmbeddingStore.open(path, key()).write(0, sig, levels(0), POS)
    other = EmbeddingStore.open(path, key(encoder={"weights": "w2", "settings": {}}))
    assert other.read(0, sig) is None  # another model: recomputed...
    other.write(0, sig, levels(1), POS)
    first = EmbeddingStore.open(path, key())  # ...and the first model's features stay
    assert all(torch.equal(a, b) for a, b in zip(first.read(0, sig), levels(0)))


def test_foreign_and_damaged_paths_are_refused_and_kept(tmp_path):
    import zarr

    a_file = tmp_path / "file.zarr"
    a_file.write_text("data")
    files = tmp_path / "results"
    files.mkdir()
    (files / "table.csv").write_text("1,2")
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").attrs["owner"] = "someone else"
    array = tmp_path / "array.zarr"
    zarr.create_array(str(array), shape=(2,), dtype="uint8")
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    for path, words in [(a_file, "is a file"), (files, "no zarr.json"),
                        (foreign, "written by something else"), (array, "something else"),
                        (broken, "unreadable zarr.json")]:
        before = sorted(p.name for p in tmp_path.rglob("*"))
        with pytest.raises(StoreError, match=words) as err:
            EmbeddingStore.open(path, key())
        assert "overwrite" in str(err.value)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing touched
    assert (files / "table.csv").read_text() == "1,2"
    store = EmbeddingStore.open(files, key(), overwrite=True)
    assert store.write(0, frame_signature(np.zeros(2)), levels(), POS)
    assert not (files / "table.csv").exists()


def test_a_damaged_chunk_is_a_miss_not_a_crash(tmp_path):
    store = EmbeddingStore.open(tmp_path / "s.zarr", key())
    sig = frame_signature(np.zeros(3))
    store.write(2, sig, levels(), POS)
    chunk = next(p for p in (store.variant / "level_0").rglob("*") if p.is_file()
                 and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage")
    again = EmbeddingStore.open(tmp_path / "s.zarr", key())
    assert again.read(2, sig) is None  # recomputed, then rewritten whole
    assert again.write(2, sig, levels(1), POS)
    assert all(torch.equal(a, b) for a, b in zip(again.read(2, sig), levels(1)))


def test_read_only_store_reads_and_never_writes(tmp_path):
    path = tmp_path / "s.zarr"
    sig = frame_signature(np.zeros(3))
    EmbeddingStore.open(path, key()).write(0, sig, levels(), POS)
    snapshot = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    store = EmbeddingStore.open(path, key(), read_only=True)
    assert store.read_only and store.read(0, sig) is not None
    assert store.write(1, sig, levels(), POS) is False
    assert EmbeddingStore.open(path, key(precision="bf16"), read_only=True).read(0, sig) is None
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == snapshot
    missing = EmbeddingStore.open(tmp_path / "absent.zarr", key(), read_only=True)
    assert missing.read(0, sig) is None and not (tmp_path / "absent.zarr").exists()


def test_a_folder_that_cannot_be_written_is_used_read_only(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    sig = frame_signature(np.zeros(3))
    EmbeddingStore.open(path, key()).write(0, sig, levels(), POS)
    monkeypatch.setattr("napari_sam2.core.store.embedding_store._writable", lambda p: False)
    store = EmbeddingStore.open(path, key())
    assert store.read_only and store.read(0, sig) is not None
    assert store.write(1, sig, levels(), POS) is False


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_stops_writing_with_one_warning(code, tmp_path, monkeypatch):
    store = EmbeddingStore.open(tmp_path / "s.zarr", key())
    sig = frame_signature(np.zeros(3))

    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("zarr.storage._local._put", refused)
    with pytest.warns(RuntimeWarning, match=os.strerror(code)):
        assert store.write(0, sig, levels(), POS) is False
    assert store.write(1, sig, levels(), POS) is False  # no second attempt, no second warning
    monkeypatch.undo()
    assert EmbeddingStore.open(tmp_path / "s.zarr", key()).read(0, sig) is None


def test_store_metadata_records_what_the_issue_lists(tmp_path):
    store = EmbeddingStore.open(tmp_path / "s.zarr", key(), stack={"name": "cells.tif"})
    store.write(0, frame_signature(np.zeros(3)), levels(), POS)
    meta = json.loads((store.variant / "zarr.json").read_text())["attributes"]["napari_sam2"]
    recorded = meta["key"]
    for field in ("encoder", "precision", "input", "normalization", "frame_shape",
                  "num_frames", "package", "format"):
        assert field in recorded
    assert meta["codec"] == "blosc-lz4" and len(meta["levels"]) == 3
    root = json.loads((store.path / "zarr.json").read_text())["attributes"]["napari_sam2"]
    assert root["stack"]["name"] == "cells.tif"
    # nothing but zarr in the store (the writers' locks live beside the default stores)
    assert not [p for p in store.path.rglob("*.lock")]


def test_reopening_reuses_arrays_but_never_a_replaced_store(tmp_path):
    path = tmp_path / "s.zarr"
    sig = frame_signature(np.zeros((8, 8)))
    first = EmbeddingStore.open(path, key())
    assert first.write(0, sig, levels(0), POS)
    again = EmbeddingStore.open(path, key())  # the arrays opened above, no metadata re-read
    assert torch.equal(again.read(0, sig)[1], levels(0)[1])
    # the store replaced behind our back (another process cleared and rebuilt it)
    EmbeddingStore.open(path, key(), overwrite=True)
    import shutil

    shutil.rmtree(path)
    rebuilt = EmbeddingStore.open(path, key())
    assert rebuilt.read(0, sig) is None  # not the removed frame
    other = [torch.randn(1, 6, 8, 8), torch.randn(1, 8, 4, 4).bfloat16(),
             torch.randn(1, 4, 2, 2).half()]  # a contiguous first level this time
    assert rebuilt.write(0, sig, other, POS)
    back = EmbeddingStore.open(path, key()).read(0, sig)
    assert back[0].is_contiguous() and torch.equal(back[0], other[0])
    assert first.read(0, sig) is not None  # the old object follows the files, not a copy
    assert torch.equal(first.read(0, sig)[0], other[0])


def test_temporary_chunks_of_a_killed_writer_go_before_the_next_write(tmp_path):
    import os
    import time

    path = tmp_path / "s.zarr"
    sig = frame_signature(np.zeros((8, 8)))
    store = EmbeddingStore.open(path, key())
    assert store.write(0, sig, levels(), POS)
    folder = store.variant / "level_0" / "c"
    stale, fresh = folder / "1.partial", folder / "2.partial"
    stale.write_bytes(b"half a chunk")
    fresh.write_bytes(b"a live writer's chunk")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    reader = EmbeddingStore.open(path, key(), read_only=True)
    assert reader.read(0, sig) is not None and stale.exists()  # reading removes nothing
    writer = EmbeddingStore.open(path, key())
    assert writer.write(1, sig, levels(1), POS)
    assert not stale.exists() and fresh.exists()
