"""Python scripts run as processes of their own, as a user runs them (``python script.py``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from support.waiting import wait_until


def run_script(path: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``path`` with the project's Python to its end."""
    return subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def catches(pid: int, sig: signal.Signals) -> bool:
    """True when process ``pid`` has a handler installed for ``sig`` (Linux: /proc status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


class Script:
    """A script started in the background; its output is collected while it runs."""

    def __init__(self, path: Path, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(path), *args], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [self._reader(self.process.stdout, self.stdout),
                         self._reader(self.process.stderr, self.stderr)]

    @staticmethod
    def _reader(stream: IO[str] | None, lines: list[str]) -> threading.Thread:
        assert stream is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True)
        reader.start()
        return reader

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_held(self, timeout: float = 30) -> None:
        """Wait until the script has run its last line and eventyard holds the process.

        SIGTERM is caught only then (eventyard installs its handler once the script has ended),
        so a signal sent after this meets the hold, not the script.
        """
        wait_until(lambda: self.process.poll() is not None or catches(self.process.pid, signal.SIGTERM),
                   timeout=timeout, what="the script to end and its consumer to hold the process")
        assert self.process.poll() is None, f"the script exited ({self.process.returncode}): {self.output()}"

    def write(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 15) -> int:
        """Wait for the exit (at most ``timeout`` seconds); return the exit status."""
        status = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return status

    def kill(self) -> None:
        """Make sure the process is gone (test clean-up)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
