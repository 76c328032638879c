"""The trainer's one error type: pickling across Ray, and out-of-memory mapping."""

from __future__ import annotations

import pickle

import pytest
import torch

from sftjob_trainer.trainer_error import TrainerError, is_out_of_memory, out_of_memory


def test_trainer_error_survives_pickling() -> None:
    data = pickle.dumps(TrainerError("ModelUnreadable", "gone", "spec.model.source"))
    err = pickle.loads(data)  # noqa: S301 - our own bytes, as Ray ships a worker's error to the driver
    assert (err.code, err.message, err.field, err.retryable) == ("ModelUnreadable", "gone", "spec.model.source", False)
    assert TrainerError("NodeLost", "x").retryable is True


def test_real_allocation_failure_maps_to_out_of_memory() -> None:
    with pytest.raises(RuntimeError) as raised:
        torch.empty(2**62, dtype=torch.uint8)  # far beyond any machine's memory: the allocator refuses at once
    assert is_out_of_memory(raised.value)
    error = out_of_memory("training step 1", str(raised.value))
    assert error.code == "OutOfMemory" and not error.retryable and "perDeviceBatchSize" in error.message
