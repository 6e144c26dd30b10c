"""Subprocess jobs that run beside the tests, on the core that the serial test run leaves idle.

Most of a test's time in this suite is one thread compiling XLA programs: a serial run keeps one
of two cores busy. A test marked ``@pytest.mark.background("name", ...)`` names jobs of its
module's ``BACKGROUND_JOBS`` (``name -> run(background, directory)``, names unique in the
suite). Once the tests are collected, conftest.py starts the jobs of the selected tests, one at
a time in a thread, in the order of the tests that need them; ``background.result(name)`` waits
for a job, or runs it at once in the caller's thread when it has not started. A job's exception
is raised in every test that waits for it. Jobs start their commands with ``popen`` (and wait
with ``finish``), so that the processes still running when the session ends are stopped.
"""

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
Job = Callable[["Background", Path], Any]


class _Outcome:
    def __init__(self):
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Background:
    def __init__(self, root: Path):
        self.root = root
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._outcomes: dict[str, _Outcome] = {}
        self._processes: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, name: str, job: Job) -> None:
        with self._lock:
            if name in self._jobs:
                if self._jobs[name] is not job:
                    raise ValueError(f"two background jobs are named {name!r}")
                return
            self._jobs[name] = job
            self._queue.append(name)

    def start(self) -> None:
        """Runs the queued jobs one after another in a daemon thread."""
        if self._thread is None and self._queue:
            self._thread = threading.Thread(target=self._work, name="background-jobs", daemon=True)
            self._thread.start()

    def _claim(self, name: str | None = None) -> tuple[str, _Outcome] | None:
        """Takes ``name`` (or the next queued job) off the queue if it has not started."""
        with self._lock:
            if self._closed:
                return None
            if name is None:
                if not self._queue:
                    return None
                name = self._queue[0]
            if name in self._outcomes:
                return None
            self._queue.remove(name)
            outcome = self._outcomes[name] = _Outcome()
            return name, outcome

    def _execute(self, name: str, outcome: _Outcome) -> None:
        directory = self.root / name.replace(":", "-")
        directory.mkdir(parents=True, exist_ok=True)
        try:
            outcome.value = self._jobs[name](self, directory)
        except BaseException as error:  # raised again in the tests that wait for it
            outcome.error = error
        finally:
            outcome.done.set()

    def _work(self) -> None:
        while claimed := self._claim():
            self._execute(*claimed)

    def result(self, name: str) -> Any:
        """The value of job ``name``, once it has run (here, now, if it had not started)."""
        if name not in self._jobs:
            raise KeyError(f"no background job {name!r}: mark the test @pytest.mark.background({name!r})")
        if claimed := self._claim(name):
            self._execute(*claimed)
        outcome = self._outcomes[name]
        outcome.done.wait()
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def popen(self, command: list[str], env: dict | None = None) -> subprocess.Popen:
        """``command`` started in the repository root, stdout and stderr together."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the session is over")
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=dict(os.environ) if env is None else env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            self._processes.append(process)
        return process

    @staticmethod
    def finish(process: subprocess.Popen, timeout: float = 600) -> str:
        """Waits for ``process``; its output, or an AssertionError with its end on a failure."""
        output, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, output[-3000:]
        return output

    def close(self) -> None:
        """Starts no more jobs and stops the processes still running."""
        with self._lock:
            self._closed = True
            running = [p for p in self._processes if p.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
