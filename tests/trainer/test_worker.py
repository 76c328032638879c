"""The worker's evaluation helpers: a mixture's evaluation loss per source, on a real (tiny) model."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftjob_trainer.forgetting import mean_token_loss
from sftjob_trainer.worker import per_source_eval_loss


def test_per_source_eval_loss_scores_each_sources_rows_alone(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
            {"input_ids": [10, 11, 12], "labels": [-100, 11, 12]},
            {"input_ids": [5, 20, 21, 22], "labels": [-100, -100, 21, 22]}]
    losses = per_source_eval_loss(model, rows, [1, 0, 1], batch_size=2, pad_token_id=0)
    assert sorted(losses) == [0, 1]
    assert losses[0] == pytest.approx(mean_token_loss(model, [rows[1]], 2, 0))
    assert losses[1] == pytest.approx(mean_token_loss(model, [rows[0], rows[2]], 2, 0))
    assert losses[0] != pytest.approx(losses[1])
