"""The teacher client (sftjob_trainer.distill.teacher): reply parsing and error messages (pure), and the Ray Data
LLM pipeline against a dead teacher. Retries of every fault kind are in test_distill_run (one pipeline run)."""

from __future__ import annotations

import pytest

from sftjob_api.codes import ErrorCode
from sftjob_api.types import DistillationSpec
from sftjob_trainer.distill.teacher import generate, split_concurrency
from sftjob_trainer.distill.teacher_api import Reply, Request, TeacherConfig, parse_reply, split_reasoning
from sftjob_trainer.distill.teacher_failures import TeacherFailure, failure_error
from sftjob_trainer.trainer_error import TrainerError

KEY = "sk-PLANTED-teacher-77"


def _body(content: str, **message: str) -> dict[str, object]:
    return {"choices": [{"message": {"role": "assistant", "content": content, **message}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7}}


def test_parse_reply_reads_answer_reasoning_and_usage() -> None:
    assert parse_reply("k", _body("42")) == Reply("k", "42", "", "stop", 11, 7)
    assert parse_reply("k", _body("42", reasoning_content="6 x 7")).reasoning == "6 x 7"
    assert parse_reply("k", _body("42", reasoning="6 x 7")).reasoning == "6 x 7"
    inline = parse_reply("k", _body("<think>\n6 x 7\n</think>\n\n42"))
    assert (inline.content, inline.reasoning) == ("42", "6 x 7")
    error = parse_reply("k", {"error": {"message": "maximum context length is 2048 tokens", "code": 400}})
    assert error.error == "maximum context length is 2048 tokens" and not error.content
    assert parse_reply("k", {"choices": []}).error


def test_split_reasoning_and_concurrency() -> None:
    assert split_reasoning("<think>unfinished") == ("", "unfinished")
    assert split_reasoning("no think block") == ("no think block", "")
    assert split_concurrency(8) == (4, 2) and split_concurrency(6) == (3, 2) and split_concurrency(7) == (1, 7)
    for concurrency in range(1, 40):
        per_actor, actors = split_concurrency(concurrency)
        assert per_actor * actors == concurrency and per_actor <= 4


def test_retry_budget_is_documented_arithmetic() -> None:
    spec = DistillationSpec.model_validate({"teacher": {"endpoint": "http://t:8000/v1", "model": "m"},
                                            "prompts": {"uri": "p.jsonl"}})
    config = TeacherConfig.from_spec(spec)
    assert config.url == "http://t:8000/v1/chat/completions"
    assert config.worst_case_seconds() == 5 * 300 + 31  # 5 tries of 300 s, sleeps 1+2+4+8+16 s


def test_failure_messages_name_the_cause_and_never_the_key() -> None:
    config = TeacherConfig(endpoint="http://t:8000/v1", model="m", max_retries=2)
    failure = TeacherFailure(endpoint=config.endpoint, done=3, total=10)
    spent = (f"ray::MapWorker(MapBatches(HttpRequestUDF)).submit() RuntimeError: Reached maximum retries of 2 for "
             f"input row {{'model': 'm', 'Authorization': 'Bearer {KEY}'}}. Previous Exception: TimeoutError. Full "
             "Traceback: \n...")
    error = failure_error(spent, config, failure, KEY)
    assert error.code == ErrorCode.TEACHER_UNAVAILABLE and error.retryable
    assert "did not answer after 2 retries (last error: no answer within" in error.message
    assert "3 of 10 answers" in error.message and KEY not in error.message
    denied = failure_error("TeacherRejected: sftjob-teacher-http-status=401 Unauthorized", config, failure, KEY)
    assert (denied.code, denied.retryable, denied.field) == ("AccessDenied", False, "distillation.teacher.secretRef")
    missing = failure_error("x sftjob-teacher-http-status=404 Not Found (not JSON)", config, failure, KEY)
    assert missing.code == "InvalidSpec" and "404 Not Found" in missing.message
    other = failure_error(f"ConnectionError: boom {KEY}", config, failure, KEY)
    assert other.code == ErrorCode.TEACHER_UNAVAILABLE and KEY not in other.message and "***" in other.message


def _requests(prompts: list[str]) -> list[Request]:
    return [Request(key=f"k{i}", messages=(("user", p),)) for i, p in enumerate(prompts)]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_dead_teacher_fails_retryable_once_its_retries_are_spent(dead_endpoint: str) -> None:
    config = TeacherConfig(endpoint=dead_endpoint, model="teacher", concurrency=2, max_retries=2, retry_base_s=0.05)
    with pytest.raises(TrainerError) as failed:
        generate(_requests(["What is 1 plus 1?", "What is 2 plus 2?"]), config, KEY, lambda replies: None)
    assert failed.value.code == ErrorCode.TEACHER_UNAVAILABLE and failed.value.retryable
    assert "did not answer after 2 retries (last error: cannot connect)" in failed.value.message
    assert "0 of 2 answers" in failed.value.message and KEY not in failed.value.message


def test_the_key_comes_from_the_teacher_variable_first() -> None:
    from sftjob_trainer.distill import api_key_from_env

    assert api_key_from_env({"OPENAI_API_KEY": "judge", "SFTJOB_TEACHER_API_KEY": "teacher"}) == "teacher"
    assert api_key_from_env({"OPENAI_API_KEY": "shared", "SFTJOB_TEACHER_API_KEY": ""}) == "shared"
    assert api_key_from_env({}) is None
