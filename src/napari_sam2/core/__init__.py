"""Predictors and data handling usable from scripts: no Qt and no napari imports here."""
