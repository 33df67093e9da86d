"""The SAM 2 network, our own implementation; loads Meta's SAM 2 and SAM 2.1 checkpoints.

Submodules import torch; import them explicitly, e.g.
``from napari_sam2.models.checkpoints import load_model``.
"""
