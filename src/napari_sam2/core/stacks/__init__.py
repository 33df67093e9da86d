"""Stacks: reading microscopy data lazily (TIFF, zarr, folders, arrays), its axes, intensity
normalisation, and a 2D image or frame turned into the model's input tensor.

May import: numpy, torch, file readers. Imports no other wing of core, nor models.
"""
