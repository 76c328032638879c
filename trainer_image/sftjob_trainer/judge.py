"""Pairwise LLM judge (`evaluation.judge`): does a judge model prefer the fine-tuned answers to the base ones?

Every prompt is judged twice through an OpenAI-compatible chat-completions endpoint, once with the fine-tuned
answer as `A` and once with it as `B`, so a judge that favours a position favours both models equally. Each of
the two judgements counts half a prompt: two orders that agree give a whole win (or a whole tie), two that
disagree give half a win to each side, a tie and a win give half a tie and half a win. So
`tuned_wins + base_wins + ties == prompts`, and `win_rate = (tuned_wins + ties / 2) / prompts` is the mean score
of all judgements (fine-tuned 1, tie 0.5, base 0), with a Wilson 95% interval over the prompts.

Retries are the `openai` client's own: a request that times out, cannot connect or answers 408, 409, 429 or
5xx is sent again up to `max_retries` times (`max_retries + 1` attempts), sleeping between attempts
`min(0.5 * 2**k, 8)` seconds less a random 0-25% for the k-th retry (0.5, 1, 2, 4, 8, 8, … s), or what the
server's `Retry-After`/`retry-after-ms` header asks for when that is under two minutes. The defaults
(`timeoutSeconds: 60`, `maxRetries: 4`) bound one request to 5 x 60 s + 7.5 s of backoff. Any other error
status (400, 401, 403, 404, 422) is final at once. Once one request has failed, or was answered with no chat
completion (a gateway's HTML page), the judge is given up: the result carries `error` and no counts, and the
job goes on (`JudgeUnavailable`); this module never raises for an unavailable judge. A reply with no verdict
in it counts as a tie and is logged. The API key is sent as a bearer token and never written to the result or the logs.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from openai import APIConnectionError, APIError, APIStatusError, OpenAI

from sftjob_api.pod_env import JUDGE_KEY_ENV, OPENAI_API_KEY
from sftjob_api.types import JudgeResult, JudgeSpec

log = logging.getLogger(__name__)

# Where the judge's key is read from: the operator's variable for `judge.secretRef`, else the usual one (local runs).
API_KEY_ENVS: Final = (JUDGE_KEY_ENV, OPENAI_API_KEY)
DEFAULT_RUBRIC: Final = "helpfulness, correctness and faithfulness to the reference answer"
# Room for a judge that explains before its verdict line; a verdict alone takes a few tokens.
DEFAULT_MAX_TOKENS: Final = 512
# 95% two-sided normal quantile.
Z_95: Final = 1.959963984540054
# Characters of an endpoint's error kept in `JudgeResult.error`: enough for its message, not a whole page.
ERROR_CHARS: Final = 300

JUDGE_PROMPT: Final = """\
You are an impartial judge. Compare two answers to the same prompt.
Judge them by: {rubric}.
A reference answer is given: treat it as correct.

[Prompt]
{prompt}

[Reference answer]
{reference}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Which answer is better? End your reply with one line: "Verdict: A", "Verdict: B" or "Verdict: tie"."""

Verdict = Literal["A", "B", "tie"]
Outcome = Literal["tuned", "base", "tie"]

# A verdict after a `Verdict` label wins over a bare token; A and B are capitals only, so the article "a" never
# reads as one, while "tie" may come in any case.
_LABELLED = re.compile(r"(?i:verdict)\W*(A|B|(?i:tie))\b")
_BARE = re.compile(r"\b(A|B|(?i:tie))\b")


@dataclass(frozen=True)
class JudgeItem:
    """One held-out prompt and the answers to compare."""

    prompt: str
    """The prompt both models answered (rendered as text)."""

    reference: str
    """The dataset's answer to it, shown to the judge as correct."""

    base: str
    """The base model's answer."""

    tuned: str
    """The fine-tuned model's answer."""


def api_key_from_env() -> str | None:
    """The judge's API key, or None when unset or empty.

    `SFTJOB_JUDGE_API_KEY` (the operator maps `judge.secretRef`'s `OPENAI_API_KEY` to it), else `OPENAI_API_KEY`.
    """
    return next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), None)


def judge_pairwise(spec: JudgeSpec, items: Sequence[JudgeItem], api_key: str | None = None, *,
                   max_tokens: int = DEFAULT_MAX_TOKENS) -> JudgeResult:
    """Judge the first `spec.max_samples` items, each in both orders, and count who wins.

    Args:
        spec: The judge: endpoint, model, rubric, sample count, timeout and retries.
        items: Prompts with their reference, base and fine-tuned answers.
        api_key: Bearer token for the endpoint (`api_key_from_env()`); None sends a placeholder, which servers
            without authentication ignore.
        max_tokens: Completion tokens allowed per judgement.

    Returns:
        The counts, win rate and its 95% interval; when the judge failed, `error` and no counts.
    """
    chosen = items[: spec.max_samples]
    rubric = spec.rubric or DEFAULT_RUBRIC
    outcomes: list[Outcome] = []
    unparseable = 0
    log.info("judging %d prompts in both orders with %s at %s", len(chosen), spec.model, spec.endpoint)
    with OpenAI(base_url=str(spec.endpoint), api_key=api_key or "unused", timeout=spec.timeout_seconds,
                max_retries=spec.max_retries) as client:
        for number, item in enumerate(chosen, start=1):
            pair: list[Outcome] = []
            for tuned_first in (True, False):
                answer_a, answer_b = (item.tuned, item.base) if tuned_first else (item.base, item.tuned)
                content = JUDGE_PROMPT.format(rubric=rubric, prompt=item.prompt, reference=item.reference,
                                              answer_a=answer_a, answer_b=answer_b)
                try:
                    reply = client.chat.completions.create(
                        model=spec.model, messages=[{"role": "user", "content": content}], temperature=0,
                        max_completion_tokens=max_tokens)
                except APIError as err:
                    return _give_up(spec, number, len(chosen), _api_error_reason(err, spec, api_key))
                try:
                    text = reply.choices[0].message.content
                except (AttributeError, IndexError):
                    # The client hands back a non-JSON body (a gateway's HTML page) as a str, and a JSON body
                    # unvalidated: without a choice the endpoint is no chat-completions API, not a judge that
                    # could not decide.
                    return _give_up(spec, number, len(chosen), f"no chat completion in the reply {_clip(str(reply))!r}")
                verdict = parse_verdict(text or "")
                if verdict is None:
                    unparseable += 1
                    log.warning("prompt %d: no verdict in the judge's reply %r, counted as a tie", number,
                                _clip(text or ""))
                pair.append(_outcome(verdict, tuned_first))
            log.info("prompt %d/%d judged: tuned first → %s, base first → %s", number, len(chosen), *pair)
            outcomes.extend(pair)
    result = _tally(spec.model, outcomes)
    log.info("judge %s: %s prompts, fine-tuned %s, base %s, ties %s, win rate %s, %d unparseable verdicts",
             spec.model, result.prompts, result.tuned_wins, result.base_wins, result.ties, result.win_rate,
             unparseable)
    return result


def parse_verdict(text: str) -> Verdict | None:
    """The verdict of a judge's reply: the last `Verdict: …` one, else the last bare `A`, `B` or `tie`.

    Args:
        text: The judge's reply.

    Returns:
        `A`, `B` or `tie`, or None when the reply names none.
    """
    found = _LABELLED.findall(text) or _BARE.findall(text)
    if not found:
        return None
    last = found[-1]
    return "tie" if last.lower() == "tie" else last


def wilson_interval(successes: float, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    Ties count as half successes, so `successes` may be fractional: the interval is then an approximation
    that treats the win rate as a binomial proportion over `total` prompts.

    Args:
        successes: Successes (fine-tuned wins plus half the ties).
        total: Trials (prompts); at least 1.
        z: Normal quantile of the confidence level (1.96 for 95%).

    Returns:
        `(low, high)`, within [0, 1].
    """
    p = successes / total
    z2n = z * z / total
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / total + z2n / (4 * total)) / (1 + z2n)
    # Rounding can push the ends a hair outside [0, 1] at p = 0 or 1.
    return max(0.0, centre - half), min(1.0, centre + half)


def _outcome(verdict: Verdict | None, tuned_first: bool) -> Outcome:
    # An unreadable reply says nothing about either answer: it counts as a tie.
    if verdict is None or verdict == "tie":
        return "tie"
    return "tuned" if (verdict == "A") == tuned_first else "base"


def _tally(model: str, outcomes: list[Outcome]) -> JudgeResult:
    prompts = len(outcomes) // 2
    if prompts == 0:
        return JudgeResult(model=model)
    # Each judgement is half a prompt; halves add up exactly in binary floating point.
    tuned, base, ties = (outcomes.count(kind) / 2 for kind in ("tuned", "base", "tie"))
    win_rate = (tuned + ties / 2) / prompts
    low, high = wilson_interval(tuned + ties / 2, prompts)
    return JudgeResult(model=model, prompts=prompts, tuned_wins=tuned, base_wins=base, ties=ties,
                       win_rate=win_rate, ci_low=low, ci_high=high)


def _give_up(spec: JudgeSpec, number: int, total: int, reason: str) -> JudgeResult:
    error = f"judge {spec.model} at {spec.endpoint} unavailable on prompt {number} of {total}: {reason}"
    log.warning("%s", error)
    return JudgeResult(model=spec.model, error=error)


def _api_error_reason(err: APIError, spec: JudgeSpec, api_key: str | None) -> str:
    # Mirrors which errors the openai client retries, to say how many attempts were spent.
    retried = isinstance(err, APIConnectionError) or (
        isinstance(err, APIStatusError) and (err.status_code in (408, 409, 429) or err.status_code >= 500))
    attempts = spec.max_retries + 1 if retried else 1
    detail = str(err)
    if api_key:
        # An endpoint may echo the key in its error body (an authenticating proxy, a misconfigured server);
        # masked before clipping, so no prefix of it survives a cut.
        detail = detail.replace(api_key, "***")
    return f"{type(err).__name__} after {attempts} attempt{'s' if attempts > 1 else ''}: {_clip(detail)}"


def _clip(text: str) -> str:
    # One line, bounded: error bodies can be whole HTML pages.
    line = " ".join(text.split())
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"
