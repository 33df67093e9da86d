"""Image-encoder features on disk: encode a stack once, reuse it in every later session.

* :mod:`~napari_sam2.core.store.signature` -- digests of frames and descriptions;
* :mod:`~napari_sam2.core.store.key` -- :class:`StoreKey`, what stored features are valid for;
* :mod:`~napari_sam2.core.store.embedding_store` -- :class:`EmbeddingStore`, the zarr store;
* :mod:`~napari_sam2.core.store.folders` -- the default stores' folder and the writers' locks;
* :mod:`~napari_sam2.core.store.location` -- where stores live: the user cache, its size
  budget and least-recently-used eviction, listing and clearing; explicit paths;
* :mod:`~napari_sam2.core.store.stack_store` -- a stack's store as the feature caches use it.
"""
