"""Without the console extra, importing the console says what to install."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_console_without_starlette_names_the_extra() -> None:
    code = ("import sys; sys.modules['starlette'] = None\n"
            "try:\n    import eventyard.console\n"
            "except Exception as error:\n    print(type(error).__name__, error)\n")

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert result.stdout.strip() == ("ConfigurationError the operator console needs starlette, which is "
                                     "not installed: pip install 'eventyard[console]'")
