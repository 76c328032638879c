"""Forgetting on a reference set: how much worse the fine-tuned model predicts text its base already handled.

The driver reads and tokenises `evaluation.reference` once, in the preflight (`reference_rows`), through the
data pipeline's own formats, chat templates and loss masks. Rank 0 scores the base model before training and
the fine-tuned model after it (`mean_token_loss`); `forgetting_result` holds the ratio of the two losses
against `evaluation.maxForgetting`, and the driver applies `onForgetting` (`check_gate`).

The base is scored as loaded, before the method is applied, for every method: for full fine-tuning and layer
freezing that is the only moment the base exists, and for adapter methods it is the same model as the tuned one
with its adapter disabled, so one code path serves all methods and nothing depends on how a PEFT method
implements disabling.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Final

from sftjob_api.codes import ErrorCode
from sftjob_api.types import EvaluationSpec, ForgettingResult, SFTJobSpec
from sftjob_trainer.data import IGNORE_INDEX, DataError, PaddedCollator, encode_conversations, read_dataset
from sftjob_trainer.data.formats import convert_rows
from sftjob_trainer.object_store import NOT_FOUND
from sftjob_trainer.trainer_error import TrainerError

log = logging.getLogger(__name__)

REFERENCE_FIELD = "spec.evaluation.reference"
# Rendered chats are scored on every assistant turn: the reference set measures what the model says, whichever
# turns `dataset.trainOn` chose to train.
REFERENCE_TRAIN_ON: Final = "assistant"


def reference_rows(spec: SFTJobSpec, tokenizer: Any, max_seq_length: int) -> list[dict[str, list[int]]]:
    """The token rows of `evaluation.reference`, bounded by its `maxRows` and `maxTokens`.

    `text` rows carry loss on every token, other layouts on their assistant turns, rendered with
    `dataset.chatTemplate` (the data pipeline's `encode_conversations`: the same templates and verified masks
    as the training data). Each row is cut to `max_seq_length`; its first label is masked, since no token
    predicts it, so a token counts the same whether or not a method prepends anything. Rows whose kept part
    has no loss-bearing token are skipped.

    Args:
        spec: The job spec (`evaluation.reference` must be set).
        tokenizer: The job's tokenizer.
        max_seq_length: The job's resolved `maxSeqLength`.

    Returns:
        `{input_ids, labels}` rows, in file order.

    Raises:
        TrainerError: DatasetUnreadable, InvalidDataset or a storage code, naming `spec.evaluation.reference`.
    """
    reference = spec.evaluation.reference
    if reference is None:
        raise ValueError("reference_rows needs spec.evaluation.reference")
    try:
        raw = read_dataset(reference.uri, reference.format)
        _, conversations, problems = convert_rows(raw.rows[: reference.max_rows], "auto", {}, raw.uri)
        if problems:
            raise DataError.from_problems(ErrorCode.INVALID_DATASET, problems)
        examples = encode_conversations(conversations, tokenizer, chat_template=spec.dataset.chat_template,
                                        train_on=REFERENCE_TRAIN_ON)
    except DataError as err:
        code = ErrorCode.DATASET_UNREADABLE if err.code == NOT_FOUND else err.code
        raise TrainerError(code, f"evaluation.reference: {err}", REFERENCE_FIELD) from None
    rows: list[dict[str, list[int]]] = []
    budget = reference.max_tokens
    for example in examples:
        cut = min(len(example.input_ids), max_seq_length, budget)
        labels = [IGNORE_INDEX, *example.labels[1:cut]]
        if cut < 2 or all(label == IGNORE_INDEX for label in labels):
            continue
        rows.append({"input_ids": example.input_ids[:cut], "labels": labels})
        budget -= cut
        if budget < 2:
            break
    if not rows:
        raise TrainerError(
            ErrorCode.INVALID_DATASET,
            f"evaluation.reference: {reference.uri}: no row has a token to score within maxSeqLength "
            f"{max_seq_length} and maxTokens {reference.max_tokens}; give it `text` rows, or chat rows with "
            "assistant turns",
            REFERENCE_FIELD,
        )
    return rows


def mean_token_loss(model: Any, rows: list[dict[str, list[int]]], batch_size: int, pad_token_id: int) -> float:
    """The model's mean loss over every loss-bearing token of `rows` (token-weighted across rows).

    Rows are length-sorted into padded batches (any attention implementation takes those) and scored in eval
    mode without gradients; each batch's mean loss is weighted by its loss-bearing tokens. The model's own loss
    is used, so a method that prepends tokens (prompt tuning) is scored as it trains.

    Args:
        model: A causal LM or PeftModel, on its device.
        rows: `{input_ids, labels}` rows whose first label is masked.
        batch_size: Rows per forward pass.
        pad_token_id: The tokenizer's padding token.

    Returns:
        The mean loss (NaN or inf for a diverged model).
    """
    import torch

    collate = PaddedCollator(pad_token_id=pad_token_id)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    device = next(p for p in model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in order[start:start + batch_size]]).items()}
            # The first label of every row is masked, so the shifted labels the loss sees hold all of them.
            count = int((batch["labels"] != IGNORE_INDEX).sum())
            out = model(**batch, use_cache=False)
            total += float(out.loss) * count
            tokens += count
    if was_training:
        model.train()
    return total / tokens


def reference_tokens(rows: list[dict[str, list[int]]]) -> int:
    """Loss-bearing tokens of reference rows."""
    return sum(len(row["labels"]) - row["labels"].count(IGNORE_INDEX) for row in rows)


def forgetting_result(base_loss: float, tuned_loss: float, rows: list[dict[str, list[int]]],
                      max_forgetting: float | None) -> ForgettingResult:
    """The forgetting figure of a job and whether it breaks `maxForgetting`.

    Args:
        base_loss: Mean token loss of the base model.
        tuned_loss: Mean token loss of the fine-tuned model.
        rows: The reference rows both were measured on.
        max_forgetting: `evaluation.maxForgetting` (None: no gate).

    Returns:
        The result; a loss that is not finite is left out with its ratio, which breaks a gate that is set.
    """
    base = base_loss if math.isfinite(base_loss) else None
    tuned = tuned_loss if math.isfinite(tuned_loss) else None
    ratio = tuned / base if base is not None and tuned is not None and base > 0 else None
    exceeded = max_forgetting is not None and (ratio is None or ratio > max_forgetting)
    return ForgettingResult(base_loss=base, tuned_loss=tuned, ratio=ratio, tokens=reference_tokens(rows),
                            rows=len(rows), max_forgetting=max_forgetting, exceeded=exceeded)


def check_gate(evaluation: EvaluationSpec, result: ForgettingResult | None) -> None:
    """Apply `onForgetting` to a result: `fail` raises, `degrade` only logs (the outputs get marked).

    Raises:
        TrainerError: ForgettingExceeded (not retryable) when the ratio breaks the gate with `onForgetting: fail`.
    """
    if result is None or not result.exceeded:
        return
    if evaluation.on_forgetting == "fail":
        raise TrainerError(
            ErrorCode.FORGETTING_EXCEEDED,
            f"{result.summary()} (onForgetting: fail; no manifest.json is written): lower "
            "hyperparameters.learningRate or epochs, use a smaller lora.r, mix general data into the training "
            "set, or raise evaluation.maxForgetting",
            "spec.evaluation.maxForgetting",
            retryable=False,
        )
    log.warning("%s; the outputs are kept and marked degraded (onForgetting: degrade)", result.summary())


__all__ = ["check_gate", "forgetting_result", "mean_token_loss", "reference_rows", "reference_tokens"]
