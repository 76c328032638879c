"""Preparing a job before training: the batching choice of the plan."""

from __future__ import annotations

from pathlib import Path

from sftjob_trainer.job_context import context_for
from sftjob_trainer.model_loading import load_tokenizer
from sftjob_trainer.preparation import plan_job

from .conftest import make_job


def test_batching_choice(tiny_model_dir: Path, copy_data: Path, tmp_path: Path) -> None:
    from sftjob_trainer.data import prepare_dataset

    for method, packing, expected in (("lora", True, "packed"), ("lora", False, "length_grouped"),
                                      ("prompt_tuning", True, "length_grouped")):
        job = make_job("t", tiny_model_dir, copy_data, tmp_path, method={"type": method},
                       dataset={"packing": packing})
        tokenizer = load_tokenizer(tiny_model_dir, job.spec.model)
        prepared = prepare_dataset(job.spec.dataset, tokenizer, seed=1)
        plan, batching = plan_job(context_for(job, 1), prepared, tokenizer, tiny_model_dir)
        assert batching == expected == plan.resolved.batching
