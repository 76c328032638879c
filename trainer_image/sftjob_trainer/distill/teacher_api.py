"""What is asked of the teacher and what it answers: its config, one request, one reply, and reading a reply body.

Pure: the OpenAI chat-completions wire form in, `Reply` out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sftjob_api.types import DistillationSpec

# Characters of a teacher's error kept in messages: enough for its reason, never a whole page.
ERROR_CHARS: Final = 300
CHAT_COMPLETIONS: Final = "/chat/completions"


@dataclass(frozen=True)
class TeacherConfig:
    """How to reach the teacher and how to sample: what the Ray Data pipeline needs (the key travels apart)."""

    endpoint: str
    """Base URL up to and including `/v1`."""
    model: str
    """The model name at the endpoint."""
    temperature: float = 0.7
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_tokens: int = 2048
    """Longest answer in tokens."""
    concurrency: int = 8
    """Requests in flight at most."""
    timeout_s: float = 300.0
    """Total timeout of one request."""
    max_retries: int = 4
    """Retries of one request (timeouts, connection errors, 408/429/5xx)."""
    retry_base_s: float = 1.0
    """Backoff base: the stage sleeps `retry_base_s * 2**k` after its k-th failed try."""

    @property
    def url(self) -> str:
        """The chat-completions URL."""
        return self.endpoint.rstrip("/") + CHAT_COMPLETIONS

    @classmethod
    def from_spec(cls, spec: DistillationSpec, retry_base_s: float = 1.0) -> TeacherConfig:
        """The config of `spec.teacher` and its sampling settings."""
        teacher = spec.teacher
        return cls(endpoint=teacher.endpoint, model=teacher.model, temperature=spec.temperature, top_p=spec.top_p,
                   max_tokens=spec.max_tokens, concurrency=teacher.concurrency, timeout_s=teacher.timeout_seconds,
                   max_retries=teacher.max_retries, retry_base_s=retry_base_s)

    def worst_case_seconds(self) -> float:
        """The longest one request can take before the run gives up on it."""
        return (self.max_retries + 1) * self.timeout_s + (2 ** (self.max_retries + 1) - 1) * self.retry_base_s


@dataclass(frozen=True)
class Request:
    """One chat-completion request; `key` addresses its reply in the cache."""

    key: str
    """Content hash of endpoint, model, messages, sampling settings and sample index (see `cache.request_key`)."""
    messages: tuple[tuple[str, str], ...]
    """(role, content) turns sent to the teacher."""


@dataclass(frozen=True)
class Reply:
    """What the teacher answered to one request."""

    key: str
    """The request's key."""
    content: str = ""
    """The answer (reasoning split off)."""
    reasoning: str = ""
    """The reasoning: `reasoning_content` / `reasoning` of the message, or a leading `<think>` block."""
    finish_reason: str = ""
    """`stop`, `length` (cut at max_tokens), ..."""
    prompt_tokens: int = 0
    """Prompt tokens, as the teacher counted them."""
    completion_tokens: int = 0
    """Completion tokens (reasoning included)."""
    error: str = ""
    """Why there is no answer (an error body the teacher sent instead); empty for an answer."""

    def to_json(self) -> dict[str, Any]:
        """The cache's form of the reply."""
        return {"key": self.key, "content": self.content, "reasoning": self.reasoning,
                "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "error": self.error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reply:
        """Read the cache's form back."""
        return cls(key=str(data["key"]), content=str(data.get("content") or ""),
                   reasoning=str(data.get("reasoning") or ""), finish_reason=str(data.get("finish_reason") or ""),
                   prompt_tokens=int(data.get("prompt_tokens") or 0),
                   completion_tokens=int(data.get("completion_tokens") or 0), error=str(data.get("error") or ""))



_THINK = re.compile(r"^\s*<think>(.*?)(</think>|$)", re.DOTALL)


def split_reasoning(content: str) -> tuple[str, str]:
    """Split a leading `<think>...</think>` block off an answer.

    Args:
        content: The message content.

    Returns:
        (answer, reasoning); an unclosed `<think>` makes everything reasoning.
    """
    match = _THINK.match(content)
    if not match:
        return content, ""
    return content[match.end():].lstrip(), match.group(1).strip()


def parse_reply(key: str, body: Any) -> Reply:
    """Read a chat-completion response body (pure).

    Args:
        key: The request's key.
        body: The decoded JSON the teacher answered.

    Returns:
        The reply; `error` set when the body holds no choice (an error object instead).
    """
    if not isinstance(body, Mapping) or not body.get("choices"):
        error: Any = body.get("error") if isinstance(body, Mapping) else None
        if isinstance(error, Mapping):
            error = error.get("message") or json.dumps(error)
        text = str(error or body)[:ERROR_CHARS]
        return Reply(key=key, error=text or "the teacher answered no choices")
    choice = body["choices"][0]
    message = choice.get("message") or {}
    content = str(message.get("content") or "")
    reasoning = str(message.get("reasoning_content") or message.get("reasoning") or "")
    if not reasoning:
        content, reasoning = split_reasoning(content)
    usage = body.get("usage") or {}
    return Reply(key=key, content=content, reasoning=reasoning.strip(), finish_reason=str(choice.get("finish_reason")
                 or ""), prompt_tokens=int(usage.get("prompt_tokens") or 0),
                 completion_tokens=int(usage.get("completion_tokens") or 0))
