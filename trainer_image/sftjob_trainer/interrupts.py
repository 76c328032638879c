"""SIGINT and SIGTERM stop a job cleanly: training stops, and the driver reports `Cancelled` instead of dying.

What Ray does with them on its own (Ray 2.60, measured through `sftjob run`):

- `ray.init` sets a Python SIGTERM handler (`sys.exit`), and its core worker adds a native failure handler that
  prints a stack dump (`*** SIGTERM received at time=...`) before handing the signal on: the driver died by
  SIGABRT with progress.json still `Running`.
- Ray Train V2's `fit()` replaces the SIGINT handler with one that calls the controller's `abort()` and waits for
  it. The controller answers between iterations of its event loop, which a worker group waiting for resources
  blocks for 60 s at a time (`RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`); once aborted, the handler `sys.exit`s in
  the driver: Ctrl-C was ignored for over 30 s, then the driver exited 1 with progress.json still `Running`.
- Ray's blocking calls (`ray.get` inside `fit()`) run Python signal handlers from their wait loop, but turn only
  `KeyboardInterrupt` into an interruption; any other exception a handler raises there is lost.

So while a job runs, both signals raise `KeyboardInterrupt` in the main thread and `Interruption.received` names
the signal; `interruptible_trainer()` keeps Ray Train from installing its own SIGINT handler. The driver then kills
the Ray Train controller (its workers die with it), stops the Ray cluster it started, and reports `Cancelled`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The exit code of a job they stopped (`sftjob run`, `python -m sftjob_trainer`): 128 + SIGINT, what a shell reports
# after Ctrl-C; SIGTERM ends with it too, since both stop the job the same way.
EXIT_CANCELLED = 130


class Interruption:
    """While open, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (outside it: nothing changes)."""

    def __init__(self) -> None:
        self.received: str | None = None
        """The first signal's name (`SIGINT`, `SIGTERM`), once one arrived."""
        self._held = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers; again after `ray.init`, which replaces SIGTERM's and adds a native one."""
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only, and only it may set handlers
        for number in SIGNALS:
            previous = signal.signal(number, self._handle)
            self._previous.setdefault(number, previous)

    def hold(self) -> None:
        """From now on signals are only noted, so that the clean-up after the first one runs to its end."""
        self._held = True

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(number).name
        if not self._held:
            raise KeyboardInterrupt(self.received)

    def __enter__(self) -> Interruption:
        self.install()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()


def interruptible_trainer() -> type:
    """Ray Train's `TorchTrainer`, without the SIGINT handler its `fit()` installs (see the module docstring).

    Returns:
        A `TorchTrainer` subclass whose `controller` is the Ray Train controller once `fit()` started it, and
        whose `abort()` kills it.
    """
    import ray
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    class InterruptibleTrainer(TorchTrainer):
        controller: Any = None

        def _register_sigint_handler(self, controller: Any) -> None:
            # fit() calls this from the main thread with the controller it just created, just before it waits on it.
            self.controller = controller

        def abort(self) -> None:
            """Kill the controller now; the worker actors it owns die with it.

            Ray Train's own `controller.abort()` would wait for the controller's event loop (see above).
            """
            if self.controller is not None:
                ray.kill(self.controller, no_restart=True)

    return InterruptibleTrainer
