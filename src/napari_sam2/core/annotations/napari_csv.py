"""Read the CSV files napari writes when a Points or Shapes layer is saved.

Points: columns ``index``, ``axis-0``, ``axis-1``, … and the layer's feature columns (``obj_id``,
``positive`` or ``label``; see :mod:`napari_sam2.core.annotations`). Shapes: ``index``,
``shape-type``, ``vertex-index``, ``axis-0``, …; rectangles only. No Qt and no napari imports.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np

from .frame_prompt import _integer
from .napari_layers import point_features

__all__ = ["read_points_csv", "read_shapes_csv"]


# ---------------------------------------------------------------------------------------------
def _read_table(path: str | os.PathLike, kind: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file; ValueError with the file name for malformed files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text CSV file") from None
    except csv.Error as err:
        raise ValueError(f"{path} is not a valid CSV file: {err}") from None
    if not rows:
        raise ValueError(f"{path} is empty; expected a napari {kind} CSV with a header row")
    header = [cell.strip() for cell in rows[0]]
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(
                f"{path}, row {line}: {len(row)} values for {len(header)} columns "
                f"({', '.join(header)})"
            )
    return header, rows[1:]


def _axis_columns(header: list[str], path: str | os.PathLike, kind: str) -> list[int]:
    found = {}
    for i, name in enumerate(header):
        if name.startswith("axis-"):
            suffix = name[len("axis-"):]
            if not suffix.isdigit():
                raise ValueError(f"{path}: unexpected column {name!r}; axis columns are axis-0, …")
            found[int(suffix)] = i
    if len(found) < 2:
        raise ValueError(
            f"{path} has no axis-0, axis-1, … coordinate columns (columns: {', '.join(header)}); "
            f"expected a CSV saved from a napari {kind} layer"
        )
    if sorted(found) != list(range(len(found))):
        raise ValueError(
            f"{path}: axis columns must be axis-0 … axis-{len(found) - 1} without gaps"
        )
    return [found[k] for k in range(len(found))]


def _float_rows(rows: list[list[str]], cols: list[int], path: Any, what: str) -> np.ndarray:
    out = np.empty((len(rows), len(cols)), dtype=np.float64)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            text = row[col].strip()
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"{path}, row {r + 2}: axis-{c} of {what} {r} is not a number: {text!r}"
                ) from None
            if not math.isfinite(value):
                raise ValueError(f"{path}, row {r + 2}: axis-{c} of {what} {r} is {text}")
            out[r, c] = value
    return out


def read_points_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a CSV written by napari's Points layer "Save" (or in the same layout).

    Columns: ``index`` (ignored), ``axis-0``, ``axis-1``, … (the coordinates, data order) and
    any feature columns, of which ``obj_id`` and ``positive`` (or ``label``) are used -- see the
    module docstring. napari writes booleans as ``1.0``/``0.0`` (or ``True``/``False`` when a
    table mixes in text); both are read.

    Returns:
        ``(coords, positive, obj_ids)``: ``N×D`` float64 coordinates in data order, ``N``
        bools, ``N`` int64 object ids.

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed CSV, no ``axis-*`` columns, a Shapes CSV, a non-numeric or
            NaN coordinate, or an invalid ``obj_id``/``positive``/``label`` value; the
            message names the file and row.
    """
    header, rows = _read_table(path, "Points")
    if "shape-type" in header or "vertex-index" in header:
        raise ValueError(
            f"{path} is a napari Shapes CSV (it has shape-type/vertex-index columns), not Points"
        )
    cols = _axis_columns(header, path, "Points")
    coords = _float_rows(rows, cols, path, "point")
    features = {
        name: [row[i].strip() for row in rows]
        for i, name in enumerate(header)
        if name in ("obj_id", "positive", "label")
    }
    try:
        positive, obj_ids = point_features(features, len(rows))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return coords, positive, obj_ids


def read_shapes_csv(path: str | os.PathLike) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Read rectangles from a CSV written by napari's Shapes layer "Save".

    Columns: ``index`` (shape number), ``shape-type``, ``vertex-index``, ``axis-0``, … and,
    optionally (not written by napari), ``obj_id``, constant within a shape.

    Returns:
        ``(rectangles, obj_ids)``: a list of ``4×D`` float64 vertex arrays in data order, and
        one object id per rectangle or ``None`` if the file has no ``obj_id`` column.

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed CSV, a shape other than a rectangle (ellipse, polygon, path,
            line), a rectangle without 4 vertices, non-numeric or NaN coordinates.
    """
    header, rows = _read_table(path, "Shapes")
    missing = [c for c in ("index", "shape-type") if c not in header]
    if missing:
        raise ValueError(
            f"{path} has no {'/'.join(missing)} column; expected a CSV saved from a napari "
            f"Shapes layer (columns index, shape-type, vertex-index, axis-0, …)"
        )
    cols = _axis_columns(header, path, "Shapes")
    coords = _float_rows(rows, cols, path, "vertex")
    i_index, i_type = header.index("index"), header.index("shape-type")
    i_obj = header.index("obj_id") if "obj_id" in header else None
    groups: list[tuple[str, str, list[int]]] = []
    for r, row in enumerate(rows):
        index = row[i_index].strip()
        if not groups or groups[-1][0] != index:
            groups.append((index, row[i_type].strip().lower(), []))
        groups[-1][2].append(r)
    rectangles, obj_ids = [], []
    for index, shape_type, members in groups:
        if shape_type != "rectangle":
            raise ValueError(
                f"{path}: shape {index} is a {shape_type or 'shape of unknown type'}; only "
                "rectangles can be used as box prompts (draw boxes with the rectangle tool)"
            )
        if len(members) != 4:
            raise ValueError(f"{path}: rectangle {index} has {len(members)} vertices, expected 4")
        rectangles.append(coords[members])
        if i_obj is not None:
            values = {rows[r][i_obj].strip() for r in members}
            if len(values) != 1:
                raise ValueError(f"{path}: rectangle {index} has several obj_id values {values}")
            value = values.pop()
            try:
                obj_ids.append(_integer(float(value), f"obj_id of rectangle {index}", 1))
            except ValueError as err:
                raise ValueError(f"{path}: {err} (got {value!r})") from None
    return rectangles, (np.array(obj_ids, dtype=np.int64) if i_obj is not None else None)


# ---------------------------------------------------------------------------------------------
