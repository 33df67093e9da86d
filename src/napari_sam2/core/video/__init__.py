"""Video: a stack followed through time or z -- the predictor (SAM 2's API) as a facade over
a frame encoder, a tracking engine, typed state, a results store with spill files, the
feature cache, the background pre-encoder and video prompts.

May import: ``core.image``, ``core.stacks`` and ``models``. Never ``core.annotations``.
"""
