"""The one error type the trainer reports: a stable code from `sftjob_api.progress` and a message a user can act on."""

from __future__ import annotations

from sftjob_api.codes import RETRYABLE, ErrorCode
from sftjob_api.types import ErrorStatus


class TrainerError(Exception):
    """An expected failure: it ends the job with `phase: Failed` and this error, never a traceback."""

    def __init__(self, code: str, message: str, field: str | None = None, retryable: bool | None = None) -> None:
        """Create the error.

        Args:
            code: An SFTJob error code (see `sftjob_api.progress`), e.g. `ModelUnreadable`.
            message: What went wrong and what to do.
            field: The spec field (or file:line) at fault.
            retryable: Whether another attempt may succeed; derived from the code when None.
        """
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retryable = code in RETRYABLE if retryable is None else retryable

    def __reduce__(self) -> tuple[type[TrainerError], tuple[str, str, str | None, bool]]:
        # Ray pickles worker exceptions to the driver; keep code, field and retryable across.
        return (TrainerError, (self.code, self.message, self.field, self.retryable))

    def to_status(self) -> ErrorStatus:
        """The error as the `error` of progress.json."""
        return ErrorStatus(code=self.code, message=self.message, field=self.field, retryable=self.retryable)


def out_of_memory(where: str, detail: str) -> TrainerError:
    """The error for an allocation failure, with the settings that lower memory use.

    Args:
        where: What was running (e.g. `the first training step`).
        detail: The allocator's message.

    Returns:
        An `OutOfMemory` error (not retryable: the same settings fail again).
    """
    return TrainerError(
        ErrorCode.OUT_OF_MEMORY,
        f"out of memory during {where} ({detail.strip().splitlines()[0][:300]}); lower "
        "hyperparameters.perDeviceBatchSize or dataset.maxSeqLength, turn on hyperparameters.gradientCheckpointing, "
        "use method.type lora/qlora, or give the workers more memory (compute.memoryPerWorker / a larger GPU)",
        field="hyperparameters.perDeviceBatchSize",
        retryable=False,
    )


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocation failure (CUDA or host)."""
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in text.lower() or "DefaultCPUAllocator" in text
