"""SIGINT and SIGTERM become one KeyboardInterrupt in the main thread while a job runs (sftjob_trainer.interrupts).

The whole path through `sftjob run` (Ray, the workers, progress.json, the exit code) is tests/trainer/test_local_run.py.
"""

from __future__ import annotations

import signal

import pytest

from sftjob_trainer.interrupts import Interruption, interruptible_trainer


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_raises_keyboard_interrupt_and_is_named(number: signal.Signals) -> None:
    with Interruption() as interruption, pytest.raises(KeyboardInterrupt):
        signal.raise_signal(number)
    assert interruption.received == number.name


def test_signals_during_the_clean_up_are_noted_not_raised() -> None:
    with Interruption() as interruption:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        interruption.hold()
        signal.raise_signal(signal.SIGINT)
    assert interruption.received == "SIGTERM"  # the first one


def test_the_handlers_in_place_before_are_restored_even_after_a_reinstall() -> None:
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with Interruption() as interruption:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as ray.init replaces it
        interruption.install()
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN
    assert {number: signal.getsignal(number) for number in before} == before


def test_ray_train_fit_installs_no_sigint_handler_of_its_own() -> None:
    from ray.train import ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    assert "_register_sigint_handler" in vars(DataParallelTrainer)  # the hook fit() calls (a rename fails here)
    trainer = interruptible_trainer()(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    before = signal.getsignal(signal.SIGINT)
    controller = object()
    trainer._register_sigint_handler(controller)
    assert signal.getsignal(signal.SIGINT) is before and trainer.controller is controller
