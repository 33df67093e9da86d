"""Image: one 2D image -- the image predictor, the automatic mask generator (and its
utilities, RLE), image embeddings, prompt validation, coordinate and mask transforms.

May import: ``core.stacks`` and ``models``. Never ``core.video`` or ``core.annotations``.
"""
