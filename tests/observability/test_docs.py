"""docs/observability.md: the worked example prints what the page says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_worked_example_prints_the_spans_shown() -> None:
    page = (ROOT / "docs" / "observability.md").read_text()
    section = page.split("## Worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"```text\n(.*?)```", section, re.S)
    assert code is not None and shown is not None
    # A process of its own: the example sets the global tracer provider, which lasts.
    done = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown.group(1)
    assert "ConnectionError: mail server down" in done.stderr  # the retry's WARNING line
