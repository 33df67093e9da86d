"""Annotations: napari's conventions -- Points/Shapes data and their CSV files as
:class:`FramePrompt` s, and masks as label images.

May import: ``core.image`` and ``core.stacks``. Never ``core.video``.
Importing the package is cheap (no torch); masks -> labels is in :mod:`.labels`.
"""

from __future__ import annotations

from .frame_prompt import FramePrompt, merge_prompts, prompts_from_dict, validate_prompts
from .napari_csv import read_points_csv, read_shapes_csv
from .napari_layers import point_features, prompts_from_boxes, prompts_from_points

__all__ = [
    "FramePrompt",
    "merge_prompts",
    "point_features",
    "prompts_from_boxes",
    "prompts_from_dict",
    "prompts_from_points",
    "read_points_csv",
    "read_shapes_csv",
    "validate_prompts",
]
