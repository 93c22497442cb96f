"""``eventyard console``: a web page to group, inspect, retry and discard dead letters.

Needs the ``console`` extra (Starlette, Jinja2, uvicorn): ``pip install 'eventyard[console]'``.
"""

from __future__ import annotations

from eventyard.errors import ConfigurationError

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ModuleNotFoundError as error:  # pragma: no cover - depends on what is installed
    raise ConfigurationError(
        f"the operator console needs {error.name}, which is not installed: "
        "pip install 'eventyard[console]'") from None

from eventyard.console.app import ConsoleConfig, create_app

__all__ = ["ConsoleConfig", "create_app"]
