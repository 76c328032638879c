"""The pairwise judge (sftjob_trainer.judge): verdict parsing, the Wilson interval, scoring in both orders, a real
`transformers serve` judge, and faults from a loopback HTTP server.

The fault server is a real HTTP server (stdlib `ThreadingHTTPServer` on 127.0.0.1) that the real `openai`
client talks to: nothing real answers 429, 500 or hangs on demand. It also records every request, so the tests
count attempts and see the Authorization header on the wire.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from sftjob_api.types import JudgeSpec
from sftjob_trainer.judge import (
    DEFAULT_RUBRIC,
    JudgeItem,
    api_key_from_env,
    judge_pairwise,
    parse_verdict,
    wilson_interval,
)

if TYPE_CHECKING:
    from tests.conftest import OpenAIServer

PLANTED_KEY = "sk-PLANTED-123"
# A hung request is released this long after it arrived, far beyond any client timeout used here.
HANG_SECONDS = 30.0
# The judge prompt's answer blocks, to read which answer a request showed in which position.
ANSWERS = re.compile(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich answer", re.DOTALL)

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    """One request as the server received it."""

    authorization: str | None
    body: dict[str, Any]

    @property
    def answers(self) -> tuple[str, str]:
        """(answer A, answer B) of the judge prompt in this request."""
        found = ANSWERS.search(self.body["messages"][0]["content"])
        assert found is not None, self.body
        return found.group(1), found.group(2)


class Endpoint:
    """A loopback HTTP server that records each request and answers it with `respond(index, body)`."""

    def __init__(self, respond: Callable[[int, dict[str, Any]], Reply]) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint._lock:
                    index = len(endpoint.seen)
                    endpoint.seen.append(Seen(self.headers.get("Authorization"), body))
                status, headers, payload = endpoint.respond(index, body)
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    # The client gave up on a hung request and closed the connection.
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def hang(self) -> Reply:
        """Answer nothing until the test ends (or HANG_SECONDS pass)."""
        self.released.wait(HANG_SECONDS)
        return 200, {}, completion("Verdict: A")


@contextmanager
def serving(respond: Callable[[int, dict[str, Any]], Reply]) -> Iterator[Endpoint]:
    """Run an Endpoint for the duration of a `with` block."""
    endpoint = Endpoint(respond)
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.released.set()
        endpoint.server.shutdown()
        endpoint.server.server_close()
        thread.join()


def completion(text: str) -> bytes:
    """A chat-completions response body whose one choice says `text`."""
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "judge",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
    }).encode()


def error(status: int, message: str, **headers: str) -> Reply:
    """An OpenAI-style error response."""
    return status, headers, json.dumps({"error": {"message": message, "type": "error"}}).encode()


def spec(base_url: str, **fields: Any) -> JudgeSpec:
    """A JudgeSpec for a test endpoint (`fields` override the defaults)."""
    return JudgeSpec(endpoint=base_url, model=fields.pop("model", "judge"), **fields)


ITEMS = [
    JudgeItem(prompt="What is 2 + 2?", reference="4", base="banana", tuned="4"),
    JudgeItem(prompt="Capital of France?", reference="Paris", base="", tuned="Paris"),
    JudgeItem(prompt="Translate 'chat' to English.", reference="cat", base="dog", tuned="cat"),
]


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("text", "verdict"), [
    ("Verdict: A", "A"),
    ("verdict: TIE", "tie"),
    ("**Verdict:** B", "B"),
    ("Answer B misses the field.\nVerdict: A", "A"),
    ("Verdict: B. A is missing the field.", "B"),  # the labelled verdict wins over a later bare letter
    ("Verdict: A\nOn reflection, verdict: B", "B"),  # the last labelled one
    ("A good answer is B", "B"),  # no label: the last bare token
    ("Verdict: a tie", "tie"),  # lower-case "a" is an article, never a verdict
    ("Both are equally good, so it is a tie.", "tie"),
    ("I cannot decide.", None),
    ("", None),
])
def test_parse_verdict(text: str, verdict: str | None) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(("successes", "total", "low", "high"), [
    (8, 10, 0.4902, 0.9433),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (1.5, 3, 0.1253, 0.8747),  # ties count half: 1.5 of 3 is a win rate of 0.5
])
def test_wilson_interval(successes: float, total: int, low: float, high: float) -> None:
    assert wilson_interval(successes, total) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from sftjob_operator.rayjob import JUDGE_KEY_ENV

    monkeypatch.delenv(JUDGE_KEY_ENV, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-from-secret")  # the operator's variable wins (judge.secretRef)
    assert api_key_from_env() == "sk-from-secret"
    monkeypatch.delenv(JUDGE_KEY_ENV)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-secret")
    assert api_key_from_env() == "sk-from-secret"
    monkeypatch.setenv("OPENAI_API_KEY", "")
    assert api_key_from_env() is None
    monkeypatch.delenv("OPENAI_API_KEY")
    assert api_key_from_env() is None


# --------------------------------------------------------------------------------------------- scoring


def right_when(answer_a_right: str, answer_b_right: str, neither: str = "Verdict: tie") -> Callable[
        [int, dict[str, Any]], Reply]:
    """A judge that replies by where the reference (the right answer) stands in the prompt."""

    def respond(index: int, body: dict[str, Any]) -> Reply:
        content = body["messages"][0]["content"]
        reference = re.search(r"\[Reference answer\]\n(.*)\n\n\[Answer A\]", content, re.DOTALL)
        assert reference is not None
        found = ANSWERS.search(content)
        assert found is not None
        if found.group(1) == reference.group(1):
            return 200, {}, completion(answer_a_right)
        if found.group(2) == reference.group(1):
            return 200, {}, completion(answer_b_right)
        return 200, {}, completion(neither)

    return respond


@pytest.mark.parametrize(("a_right", "b_right", "tuned", "base", "ties", "win_rate"), [
    # Always prefers the right (fine-tuned) answer, in either position: whole wins.
    ("Verdict: A", "Verdict: B", 3, 0, 0, 1.0),
    # Always says A, whatever it shows: the two orders disagree on every prompt, half a win each side.
    ("Verdict: A", "Verdict: A", 1.5, 1.5, 0, 0.5),
    # Prefers the right answer when it is B, calls a tie when it is A: half a win and half a tie per prompt.
    ("Verdict: tie", "Verdict: B", 1.5, 0, 1.5, 0.75),
    # Always prefers the wrong (base) answer.
    ("Verdict: B", "Verdict: A", 0, 3, 0, 0.0),
])
def test_scores_both_orders(a_right: str, b_right: str, tuned: float, base: float, ties: float,
                            win_rate: float) -> None:
    with serving(right_when(a_right, b_right)) as endpoint:
        result = judge_pairwise(spec(endpoint.base_url), ITEMS)
    low, high = wilson_interval(tuned + ties / 2, 3)
    assert result.model_dump(by_alias=False) == {"model": "judge", "prompts": 3, "tuned_wins": tuned, "base_wins": base,
                                   "ties": ties, "win_rate": win_rate, "ci_low": low, "ci_high": high,
                                   "error": None}
    # Every item in both orders, tuned first.
    assert [seen.answers for seen in endpoint.seen] == [
        pair for item in ITEMS for pair in ((item.tuned, item.base), (item.base, item.tuned))]


def test_unparseable_reply_counts_as_tie_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sftjob_trainer.judge")
    with serving(right_when("I like the first one", "Verdict: B")) as endpoint:
        result = judge_pairwise(spec(endpoint.base_url), ITEMS[:2])
    assert (result.prompts, result.tuned_wins, result.base_wins, result.ties, result.win_rate) == (2, 1, 0, 1, 0.75)
    assert [r.getMessage() for r in caplog.records] == [
        "prompt 1: no verdict in the judge's reply 'I like the first one', counted as a tie",
        "prompt 2: no verdict in the judge's reply 'I like the first one', counted as a tie",
    ]


def test_request_shape_and_max_samples() -> None:
    items = [JudgeItem(prompt=f"p{i}", reference="r", base="b", tuned="t") for i in range(5)]
    with serving(lambda index, body: (200, {}, completion("Verdict: A"))) as endpoint:
        default = judge_pairwise(spec(endpoint.base_url, max_samples=2), items, max_tokens=7)
        custom = judge_pairwise(spec(endpoint.base_url, max_samples=1, rubric="valid JSON"), items)
    assert (default.prompts, custom.prompts) == (2, 1)
    assert len(endpoint.seen) == 2 * 2 + 2 * 1
    first = endpoint.seen[0].body
    assert {key: first[key] for key in ("model", "temperature", "max_completion_tokens")} == {
        "model": "judge", "temperature": 0, "max_completion_tokens": 7}
    assert [message["role"] for message in first["messages"]] == ["user"]
    assert f"Judge them by: {DEFAULT_RUBRIC}." in first["messages"][0]["content"]
    assert "[Prompt]\np0\n\n[Reference answer]\nr\n\n" in first["messages"][0]["content"]
    assert "Judge them by: valid JSON." in endpoint.seen[-1].body["messages"][0]["content"]
    assert endpoint.seen[0].authorization == "Bearer unused"


# ------------------------------------------------------------------------------------------ a real judge


@pytest.mark.slow
def test_real_judge_through_transformers_serve(openai_server: OpenAIServer) -> None:
    def forward(index: int, body: dict[str, Any]) -> Reply:
        # A recording proxy in front of the real server: what the judge sent, on the wire. The URL is the
        # fixture's http:// loopback address.
        url = f"{openai_server.base_url}/chat/completions"
        request = urllib.request.Request(  # noqa: S310
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
                return response.status, {}, response.read()
        except urllib.error.HTTPError as err:
            return err.code, {}, err.read()

    with serving(forward) as proxy:
        result = judge_pairwise(spec(proxy.base_url, model=openai_server.model), ITEMS, max_tokens=16)
    assert result.error is None
    assert result.model == openai_server.model
    assert result.prompts == len(ITEMS)
    assert result.tuned_wins + result.base_wins + result.ties == len(ITEMS)
    assert result.win_rate is not None and result.ci_low is not None and result.ci_high is not None
    assert 0 <= result.ci_low <= result.win_rate <= result.ci_high <= 1
    # The 135M judge's taste is not asserted; that it saw every item in both orders is.
    assert [seen.answers for seen in proxy.seen] == [
        pair for item in ITEMS for pair in ((item.tuned, item.base), (item.base, item.tuned))]
    assert {seen.body["model"] for seen in proxy.seen} == {openai_server.model}


# ----------------------------------------------------------------------------------------------- faults

# Errors carry `retry-after-ms: 1`, a header the openai client honours, so retries do not sleep its 0.5-8 s
# backoff; how many attempts it makes does not depend on it.
FAST_RETRY = {"retry-after-ms": "1"}


def test_rate_limit_then_success() -> None:
    def respond(index: int, body: dict[str, Any]) -> Reply:
        return error(429, "slow down", **FAST_RETRY) if index < 2 else (200, {}, completion("Verdict: A"))

    with serving(respond) as endpoint:
        result = judge_pairwise(spec(endpoint.base_url, max_retries=2), ITEMS[:1])
    assert (result.error, result.prompts, result.tuned_wins, result.base_wins) == (None, 1, 0.5, 0.5)
    # Three attempts of the first request (two 429s, then an answer), one of the second.
    assert len(endpoint.seen) == 4
    assert endpoint.seen[0].body == endpoint.seen[1].body == endpoint.seen[2].body != endpoint.seen[3].body


def test_server_errors_exhaust_the_retries() -> None:
    with serving(lambda index, body: error(500, "boom", **FAST_RETRY)) as endpoint:
        result = judge_pairwise(spec(endpoint.base_url, max_retries=2), ITEMS)
    assert len(endpoint.seen) == 3
    assert result.model_dump(by_alias=False, exclude={"error"}) == {
        "model": "judge", "prompts": 0, "tuned_wins": 0, "base_wins": 0, "ties": 0, "win_rate": None, "ci_low": None,
        "ci_high": None}
    assert result.error == (f"judge judge at {endpoint.base_url} unavailable on prompt 1 of 3: InternalServerError "
                            "after 3 attempts: Error code: 500 - boom")


def test_a_failure_after_some_prompts_drops_their_counts() -> None:
    def respond(index: int, body: dict[str, Any]) -> Reply:
        return (200, {}, completion("Verdict: A")) if index < 2 else error(503, "gone", **FAST_RETRY)

    with serving(respond) as endpoint:
        result = judge_pairwise(spec(endpoint.base_url, max_retries=1), ITEMS)
    assert len(endpoint.seen) == 2 + 2
    assert (result.prompts, result.tuned_wins, result.win_rate) == (0, 0, None)
    assert result.error is not None and "on prompt 2 of 3: InternalServerError after 2 attempts" in result.error


def test_hung_server_times_out_within_the_budget() -> None:
    with serving(lambda index, body: endpoint.hang()) as endpoint:
        started = time.monotonic()
        result = judge_pairwise(spec(endpoint.base_url, timeout_seconds=0.5, max_retries=1), ITEMS)
        elapsed = time.monotonic() - started
    # Two attempts of 0.5 s and one backoff of at most 0.5 s, plus slack for a busy machine.
    assert elapsed < 5, elapsed
    assert len(endpoint.seen) == 2
    assert result.prompts == 0
    assert result.error is not None and "APITimeoutError after 2 attempts: Request timed out." in result.error


@pytest.mark.parametrize(("status", "name"), [(401, "AuthenticationError"), (404, "NotFoundError")])
def test_client_errors_give_up_at_once(status: int, name: str) -> None:
    with serving(lambda index, body: error(status, "no")) as endpoint:
        result = judge_pairwise(spec(endpoint.base_url, max_retries=3), ITEMS)
    assert len(endpoint.seen) == 1
    assert result.prompts == 0
    assert result.error is not None and f"{name} after 1 attempt: Error code: {status}" in result.error


def test_reply_without_a_completion_is_an_error() -> None:
    with serving(lambda index, body: (200, {"Content-Type": "text/html"}, b"<html>gateway</html>")) as endpoint:
        result = judge_pairwise(spec(endpoint.base_url), ITEMS)
    assert len(endpoint.seen) == 1
    assert result.prompts == 0
    assert result.error == (f"judge judge at {endpoint.base_url} unavailable on prompt 1 of 3: no chat completion "
                            "in the reply '<html>gateway</html>'")


def test_api_key_is_sent_but_never_logged_or_reported(caplog: pytest.LogCaptureFixture) -> None:
    # Every logger at DEBUG, the openai client's and httpx's included; the server echoes the key back in its
    # error, as an authenticating proxy might.
    caplog.set_level(logging.DEBUG)

    def respond(index: int, body: dict[str, Any]) -> Reply:
        if index < 2:
            return 200, {}, completion("Verdict: A")
        return error(401, f"Incorrect API key provided: {endpoint.seen[index].authorization}")

    with serving(respond) as endpoint:
        result = judge_pairwise(spec(endpoint.base_url), ITEMS, api_key=PLANTED_KEY)
    assert [seen.authorization for seen in endpoint.seen] == [f"Bearer {PLANTED_KEY}"] * 3
    assert result.error is not None and "Incorrect API key provided: Bearer ***" in result.error
    assert PLANTED_KEY not in result.model_dump_json()
    assert "judging 3 prompts" in caplog.text
    assert PLANTED_KEY not in caplog.text
