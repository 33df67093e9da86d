"""The fault suite shares the dock-widget fixtures (a real viewer, the tiny model)."""

from tests.widgets.conftest import dock, loaded, widget_checkpoint  # noqa: F401
