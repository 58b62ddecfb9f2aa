"""Child processes the project starts (nginx, wxmgw, the front, test peers): stop them cleanly."""

from __future__ import annotations

import signal
import subprocess
from types import TracebackType
from typing import Self


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout`` s, then kill; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class ChildServer:
    """A server run as one child process: ``start()`` (the subclass's) until ready,
    ``stop()``, ``restart()`` (a crash: killed, started again); a context manager."""

    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The process's pid while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, timeout=5.0)

    def restart(self) -> None:
        """Kill it abruptly (every session drops) and start it again."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
