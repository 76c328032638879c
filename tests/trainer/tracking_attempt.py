"""One training attempt with sftjob's tracking callback: a tiny HF Trainer, run as a subprocess by test_tracking.py.

    python tracking_attempt.py JOB_JSON PROGRESS_JSON OUTPUT_URI MODEL_DIR HF_DIR MAX_STEPS KILL_AT

It waits for PROGRESS_JSON to appear (the test starts it early, so that its imports overlap other work), resumes
from the newest `checkpoint-*` under HF_DIR (as a retried attempt resumes from the newest checkpoint),
saves one every 2 steps, logs every step, and SIGKILLs itself right after logging step KILL_AT (0: never), before
that step's checkpoint is saved: a pod killed mid-run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

SEQ_LEN = 16
ROWS = 32
SAVE_EVERY = 2
WAIT_S = 600


def main(argv: list[str]) -> None:
    """Run the attempt."""
    job_json, progress_json, output_uri, model_dir, hf_dir, max_steps, kill_at = argv
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from sftjob_api.progress import ProgressFile
    from sftjob_api.types import parse_sftjob
    from sftjob_trainer.tracking import tracking_callback

    torch.set_num_threads(1)
    # Started before its driver opened the runs (the imports overlap the tracking server's start): wait for them.
    deadline = time.monotonic() + WAIT_S
    while not Path(progress_json).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{progress_json} never appeared")
        time.sleep(0.1)
    job = parse_sftjob(json.loads(Path(job_json).read_text()))
    progress = ProgressFile.model_validate_json(Path(progress_json).read_text())
    rng = random.Random(0)  # noqa: S311 - test data
    rows = [{"input_ids": ids, "labels": ids} for ids in ([rng.randrange(8, 1000) for _ in range(SEQ_LEN)]
                                                          for _ in range(ROWS))]

    class KillAfterLog(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            print(f"trained step {state.global_step} loss {(logs or {}).get('loss')}", flush=True)
            if state.global_step == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)

    args = TrainingArguments(output_dir=hf_dir, max_steps=int(max_steps), per_device_train_batch_size=2,
                             learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=SAVE_EVERY,
                             report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=1)
    callback = tracking_callback(job, output_uri, progress)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=rows,
                      callbacks=[callback, KillAfterLog()])
    checkpoints = sorted(Path(hf_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)


if __name__ == "__main__":
    main(sys.argv[1:])
