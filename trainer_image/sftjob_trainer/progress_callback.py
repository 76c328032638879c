"""Rank 0's view of training: Trainer events become progress.json and metrics.jsonl.

Every rank counts its loss-bearing tokens (`TokenCounter`); the progress callback sums them over the ranks at
every step, and rank 0 writes step, throughput, ETA, metrics and the checkpoints Ray Train registered.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from sftjob_api.types import CheckpointRef
from sftjob_trainer import object_store
from sftjob_trainer.reporting import ProgressWriter, merge_metrics, metrics_from_log

# Steps in the sliding window of the tokens/s figure (recent throughput, not the run's average).
THROUGHPUT_WINDOW = 20


class TokenCounter:
    """Counts loss-bearing tokens of every training forward pass (a forward pre-hook on the model)."""

    def __init__(self) -> None:
        self.local = 0

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        """Add the batch's loss-bearing tokens (labels shifted by one, as the causal loss sees them)."""
        labels = kwargs.get("labels")
        if module.training and labels is not None:
            self.local += int((labels[..., 1:] != -100).sum())


def _all_ranks_sum(value: int) -> int:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(tensor)
    return int(tensor.item())


def make_progress_callback(writer: ProgressWriter | None, counter: TokenCounter, checkpoints_uri: str,
                           known_checkpoints: list[CheckpointRef], base_tokens: int) -> Any:
    """The callback that turns Trainer events into progress.json and metrics.jsonl (rank 0 writes).

    Args:
        writer: The progress writer on rank 0, None on other ranks.
        counter: The token counter hooked into the model.
        checkpoints_uri: `<output>/checkpoints/<run>` where Ray Train persists checkpoints.
        known_checkpoints: Checkpoints of earlier attempts (kept in the list).
        base_tokens: Tokens trained by earlier attempts.

    Returns:
        A `transformers.TrainerCallback`.
    """
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.start = time.monotonic()
            self.start_step = 0
            self.started = False
            self.tokens = base_tokens
            self.window: deque[tuple[float, int]] = deque(maxlen=THROUGHPUT_WINDOW)
            self.checkpoints = list(known_checkpoints)
            self.last_eval_loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.monotonic()
            self.window.append((self.start, self.tokens))
            if writer is not None:
                writer.update(force=True, phase="Running", message=None, total_steps=state.max_steps)

        def _first_step(self, state: Any) -> None:
            # The Trainer restores a checkpoint's step only after on_train_begin: the first step tells.
            self.start_step = state.global_step - 1
            self.started = True
            if writer is not None:
                writer.truncate_metrics_after(self.start_step)  # drop what a dead attempt logged past its checkpoint
                writer.update(force=True, resumed_from_step=self.start_step or None)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.started:
                self._first_step(state)
            self.tokens += _all_ranks_sum(counter.local)
            counter.local = 0
            now = time.monotonic()
            self.window.append((now, self.tokens))
            first_t, first_tokens = self.window[0]
            rate = (self.tokens - first_tokens) / (now - first_t) if now > first_t else None
            if writer is not None:
                done = state.global_step - self.start_step
                writer.update(
                    force=state.global_step >= state.max_steps,
                    **writer.progress_fields(state.global_step, state.max_steps, state.epoch or 0.0,
                                             now - self.start, done, self.tokens, rate),
                )

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if writer is None or not logs:
                return
            record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
            if "eval_loss" in logs:
                record["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))  # exp(50) bounds a diverged run
                self.last_eval_loss = logs["eval_loss"]
            writer.append_metrics(record)
            writer.update(force="eval_loss" in logs, trained_tokens=self.tokens,
                          metrics=merge_metrics(writer.state.metrics, metrics_from_log(logs)))

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # Runs after RayTrainReportCallback.on_save, which has persisted the checkpoint: the directory
            # it just wrote is the newest (Ray names them checkpoint_<timestamp>). Older unknown ones are
            # uploads that failed part-way and that Ray never registered: never listed, never resumed from.
            if writer is None:
                return
            dirs = {name.split("/", 1)[0] for name in object_store.list_files(checkpoints_uri)
                    if name.startswith("checkpoint_") and "/" in name}  # directories, not Ray's snapshot file
            unknown = dirs - {ref.uri.rsplit("/", 1)[-1] for ref in self.checkpoints}
            if unknown:
                self.checkpoints.append(CheckpointRef(step=state.global_step,
                                                      uri=object_store.join(checkpoints_uri, max(unknown)),
                                                      eval_loss=self.last_eval_loss, trained_tokens=self.tokens))
            alive = [ref for ref in self.checkpoints if ref.uri.rsplit("/", 1)[-1] in dirs]
            self.checkpoints = alive
            writer.update(force=True, checkpoints=alive)

    return ProgressCallback()
