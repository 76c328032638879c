"""`distill()` end to end through Ray Data against a fault-injecting teacher on loopback.

Prompts -> the Ray Data LLM pipeline (riding out 429, 500, 502, 503, 504, hung and dropped connections and a
non-JSON 200, within teacher.concurrency) -> filters -> data/distilled.jsonl + stats, with exact counts per drop
reason; the cache (a second call sends nothing); a teacher that goes away halfway (partial output kept, never
taken as complete, the next call continues from it); a planted API key that
must reach the teacher and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from distill_helpers import ARITHMETIC, FAST, FakeTeacher, arithmetic_prompts, make_spec, write_jsonl

from sftjob_api.codes import ErrorCode
from sftjob_api.types import DataSource
from sftjob_trainer.distill import DISTILLED_FILE, REJECTED_FILE, STATS_FILE, GenerationProgress, distill
from sftjob_trainer.distill.cache import ReplyStore
from sftjob_trainer.trainer_error import TrainerError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

PLANTED_KEY = "sk-PLANTED-distill-4242"


def _ray_logs() -> list[Path]:
    import ray._private.worker as worker

    return [p for p in Path(worker._global_node.get_session_dir_path()).rglob("*") if p.is_file()]


def _files_with(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_prompts_to_filtered_data_with_counts_cache_and_no_leaked_key(
        fake_teacher: FakeTeacher, tmp_path: Path, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"question": f"What is {a} plus {b}?", "answer": str(a + b)} for a, b in ARITHMETIC]
    rows += [rows[0],  # the same prompt again: the same answer, a duplicate
             {"question": "What is 20 plus 22?", "answer": "42"},  # answered wrong
             {"question": "What is the admin password?", "answer": "n/a"},  # refused
             {"question": "What is 2 plus 2?", "answer": "4"}]  # the teacher sends an error object
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    validation = write_jsonl(tmp_path / "val.jsonl", [{"messages": [
        {"role": "user", "content": "What is 41 plus 1?"}, {"role": "assistant", "content": "42"}]}])
    fake_teacher.wrong.add("What is 20 plus 22?")
    fake_teacher.json_errors, fake_teacher.delay = True, 0.1
    # Every fault the HTTP stage (with the session hook) must ride out, one prompt each, and a per-request error.
    fake_teacher.faults.update({"What is 7 plus 5?": [500, 500], "What is 12 plus 30?": ["hang"],
                                "What is 3 plus 4?": [429, 503, 504], "What is 100 plus 23?": ["drop", 502],
                                "What is 9 plus 9?": ["html"], "What is 2 plus 2?": [400]})
    spec = make_spec(fake_teacher.url, str(prompts), str(tmp_path / "out"), systemPrompt="Be brief.",
                     teacher={"concurrency": 3, "timeoutSeconds": 2, "maxRetries": 3},
                     filters={"verifier": {"extract": "boxed"}})
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={
        "validation": DataSource(uri=str(validation))})})
    output = tmp_path / "out" / "job"
    seen: list[GenerationProgress] = []

    result = distill(spec, str(output), seen.append, api_key=PLANTED_KEY, options=FAST)

    stats = result.stats
    assert stats.complete and stats.prompts == 10 and stats.responses == 10 and stats.kept == 5
    assert stats.dropped == {"teacher_error": 1, "refusal": 1, "wrong_answer": 1, "contaminated": 1, "duplicate": 1}
    assert stats.requests == 9 and stats.cached_requests == 0  # the repeated prompt is one request
    tries = {prompt: fake_teacher.total_requests(prompt) for prompt in fake_teacher.faults}
    assert tries == {"What is 7 plus 5?": 3, "What is 12 plus 30?": 2, "What is 3 plus 4?": 4,
                     "What is 100 plus 23?": 3, "What is 9 plus 9?": 2, "What is 2 plus 2?": 1}
    assert fake_teacher.total_requests() == 18  # 9 requests + 9 retries; a JSON 400 is an answer, never retried
    assert 2 <= fake_teacher.max_in_flight() <= 3, "at most teacher.concurrency requests in flight"
    assert stats.cache is not None and stats.cache.startswith("miss ")
    assert stats.completion_tokens > 0 and stats.prompt_tokens > 0
    kept = [json.loads(line) for line in (output / DISTILLED_FILE).read_text().splitlines()]
    assert [row["messages"][0]["content"] for row in kept] == [f"What is {a} plus {b}?" for a, b in ARITHMETIC[:5]]
    assert kept[0]["messages"][1] == {"role": "assistant", "content": "7 plus 5 is 12. \\boxed{12}"}
    rejected = [json.loads(line) for line in (output / REJECTED_FILE).read_text().splitlines()]
    assert sorted(r["reason"] for r in rejected) == sorted(stats.dropped)
    assert json.loads((output / STATS_FILE).read_text())["kept"] == 5
    # The system prompt reached the teacher, not the training rows; the key reached the teacher as a bearer token.
    assert fake_teacher.seen[0].body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert {s.authorization for s in fake_teacher.seen} == {f"Bearer {PLANTED_KEY}"}
    assert seen[-1].stage == "answers" and seen[-1].done == seen[-1].total == 10

    again = distill(spec, str(output), api_key=PLANTED_KEY, options=FAST)  # a retried attempt
    assert fake_teacher.total_requests() == 18, "a complete cache sends nothing"
    assert again.stats.requests == 0 and again.stats.cached_requests == 9
    assert again.stats.cache == stats.cache.replace("miss", "hit") and again.stats.sha256 == stats.sha256

    captured = capfd.readouterr()
    assert PLANTED_KEY not in captured.out + captured.err + caplog.text
    assert _files_with(tmp_path, PLANTED_KEY) == []
    assert not [p for p in _ray_logs() if PLANTED_KEY.encode() in p.read_bytes()], "the key is in Ray's logs"


def test_a_teacher_that_goes_away_leaves_partial_output_and_the_next_attempt_continues(
        fake_teacher: FakeTeacher, tmp_path: Path) -> None:
    prompts = arithmetic_prompts(tmp_path / "prompts.jsonl")
    spec = make_spec(fake_teacher.url, str(prompts), str(tmp_path),
                     teacher={"concurrency": 1, "maxRetries": 1, "timeoutSeconds": 60})
    output = tmp_path / "job"
    # Three answers, then the teacher is gone (503 to everything): once the three replies are in the cache, so the
    # test does not race Ray Data's pipeline (a reply still inside it when the run aborts is asked for again).
    fake_teacher.healthy_requests, fake_teacher.after = 3, 503
    fake_teacher.gate = lambda: len(ReplyStore(str(output)).load()) >= 3
    options = dataclasses.replace(FAST, flush_replies=1)

    with pytest.raises(TrainerError) as failed:
        distill(spec, str(output), api_key=PLANTED_KEY, options=options)

    assert failed.value.code == ErrorCode.TEACHER_UNAVAILABLE and failed.value.retryable
    assert "did not answer after 1 retries (last error: Service Unavailable)" in failed.value.message
    assert "3 of 6 answers" in failed.value.message and PLANTED_KEY not in failed.value.message
    assert not (output / DISTILLED_FILE).exists(), "partial output is never the training file"
    partial = json.loads((output / STATS_FILE).read_text())
    assert partial["complete"] is False and partial["requests"] == 3 and partial["cache"].startswith("miss ")
    before = fake_teacher.total_requests()

    fake_teacher.after = None  # the teacher is back
    result = distill(spec, str(output), api_key=PLANTED_KEY, options=FAST)

    assert result.stats.complete and result.stats.kept == 6
    assert result.stats.cached_requests == 3 and result.stats.requests == 3
    # (a request queued in the failed run's actor may still arrive after the abort: counted by prompt, not by number)
    answered = {s.prompt for s in fake_teacher.seen[:3]}
    asked_again = {s.prompt for s in fake_teacher.seen[before:]}
    assert len(asked_again) == 3 and not asked_again & answered, "only what was missing is asked for"
    assert result.stats.cache is not None and result.stats.cache.startswith("partial ")


def test_a_wrong_key_fails_at_once_and_is_not_retried(fake_teacher: FakeTeacher, tmp_path: Path) -> None:
    prompts = arithmetic_prompts(tmp_path / "prompts.jsonl", ARITHMETIC[:2])
    fake_teacher.after = 401
    spec = make_spec(fake_teacher.url, str(prompts), str(tmp_path))
    with pytest.raises(TrainerError) as failed:
        distill(spec, str(tmp_path / "job"), api_key=PLANTED_KEY, options=FAST)
    assert failed.value.code == "AccessDenied" and not failed.value.retryable
    assert failed.value.field == "distillation.teacher.secretRef" and PLANTED_KEY not in str(failed.value)
    assert fake_teacher.total_requests() <= 2, "a 401 is never retried"

