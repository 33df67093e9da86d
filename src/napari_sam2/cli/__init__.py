"""The ``napari-sam2`` command line: :func:`main` parses the arguments and runs the command.

One module per command (:mod:`.track`, :mod:`.segment`, :mod:`.embed`, :mod:`.cache`,
:mod:`.models` for ``models`` and ``download``, :mod:`.demo`), sharing :mod:`.common`,
:mod:`.model_options`, :mod:`.store_options`, :mod:`.inputs` and :mod:`.output`;
:mod:`.main` builds the parser and turns failures into exit statuses.
"""

from .main import main

__all__ = ["main"]
