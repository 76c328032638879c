"""Helpers of the distillation tests: a fault-injecting teacher on loopback and SFTJob specs around it.

`FakeTeacher` is a real HTTP server (stdlib `ThreadingHTTPServer` on 127.0.0.1) speaking the OpenAI
chat-completions shape: nothing real answers 429, 500 or hangs on demand. It answers arithmetic prompts
("What is A plus B?") with `A plus B is C. \\boxed{C}` (or a wrong sum when told), Self-Instruct prompts with
numbered instruction lists, Evol-Instruct prompts with a rewrite, and records every request with its headers.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sftjob_api.types import SFTJobSpec
from sftjob_trainer.distill import DistillOptions

# A hung request is released this long after it arrived, far beyond the client timeouts used here.
HANG_SECONDS = 20.0
# The longest a gated request waits for its gate.
GATE_SECONDS = 60.0
# Tests shrink the HTTP stage's backoff: 0.05, 0.1, 0.2 ... s instead of 1, 2, 4 ... s.
FAST = DistillOptions(retry_base_s=0.05, flush_replies=2, flush_seconds=0.5, progress_interval_s=0.0)
_SUM = re.compile(r"What is (\d+) plus (\d+)\?")
_COUNT = re.compile(r"Write (\d+) new tasks")
_GIVEN = re.compile(r"#Given Prompt#:\n(.*)\n\nReply", re.DOTALL)

# An action for one request: "ok", "hang", "drop" (close the connection unanswered), "html" (200 with a web page),
# or an HTTP status to answer
# with (a JSON error body with `json_errors`, else plain text, as proxies and crashed servers answer).
Action = str | int


@dataclass
class Seen:
    """One request as the teacher received it."""

    authorization: str | None
    body: dict[str, Any]
    arrived: float
    left: float = 0.0

    @property
    def prompt(self) -> str:
        """The last user turn."""
        return str(self.body["messages"][-1]["content"])


@dataclass
class FakeTeacher:
    """The server's state: scripted faults per prompt, and what it saw."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    faults: dict[str, list[Action]] = field(default_factory=lambda: defaultdict(list))
    """Per prompt substring: actions for its next requests, consumed in order (then answered normally)."""
    after: Action | None = None
    """Once `healthy_requests` requests were answered, every later request gets this action."""
    healthy_requests: int = 0
    gate: Callable[[], bool] | None = None
    """With `after`: its requests wait until this is true (at most GATE_SECONDS) before they get `after`."""
    wrong: set[str] = field(default_factory=set)
    """Prompts (exact) answered with a wrong sum."""
    json_errors: bool = False
    """Answer 4xx statuses with an OpenAI-style JSON error object (5xx are always plain text)."""
    delay: float = 0.0
    """Seconds each answer takes (to see concurrency)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _answered: int = 0
    _instructions: int = 0

    def action(self, prompt: str) -> Action:
        with self._lock:
            for marker, actions in self.faults.items():
                if marker in prompt and actions:
                    return actions.pop(0)
            if self.after is None or self._answered < self.healthy_requests:
                self._answered += 1
                return "ok"
            after = self.after
        deadline = time.monotonic() + GATE_SECONDS
        while self.gate is not None and not self.gate() and time.monotonic() < deadline:
            time.sleep(0.05)
        return after

    def answer(self, prompt: str) -> str:
        if (count := _COUNT.search(prompt)) is not None:
            with self._lock:
                start, self._instructions = self._instructions, self._instructions + int(count.group(1))
            topics = ["volcanoes", "tax law", "sourdough", "chess openings", "glaciers", "jazz harmony", "bridges",
                      "octopuses", "compilers", "tides", "beekeeping", "origami"]
            lines = [f"{i + 1}. Explain how {topics[(start + i) % len(topics)]} relate to topic number {start + i} "
                     "in plain words." for i in range(int(count.group(1)))]
            return "\n".join(lines)
        if (given := _GIVEN.search(prompt)) is not None:
            return f"#Rewritten Prompt#: {given.group(1).strip()} Justify every step with a worked example."
        if "password" in prompt:
            return "I'm sorry, but I can't share passwords."
        if (numbers := _SUM.search(prompt)) is not None:
            a, b = int(numbers.group(1)), int(numbers.group(2))
            total = a + b + (1 if prompt in self.wrong else 0)
            return f"{a} plus {b} is {total}. \\boxed{{{total}}}"
        return f"Here is my answer to: {prompt}"

    def total_requests(self, marker: str = "") -> int:
        return sum(1 for s in self.seen if marker in s.prompt)

    def max_in_flight(self) -> int:
        events = sorted([(s.arrived, 1) for s in self.seen] + [(s.left, -1) for s in self.seen])
        current = best = 0
        for _, step in events:
            current += step
            best = max(best, current)
        return best


def _serve(teacher: FakeTeacher, server: ThreadingHTTPServer) -> None:
    server.serve_forever(poll_interval=0.05)


@pytest.fixture
def fake_teacher() -> Iterator[FakeTeacher]:
    """A fresh fault-injecting teacher on 127.0.0.1 for one test."""
    state: dict[str, FakeTeacher] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            teacher = state["teacher"]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen = Seen(self.headers.get("Authorization"), body, time.monotonic())
            with teacher._lock:
                teacher.seen.append(seen)
            prompt = seen.prompt
            action = teacher.action(prompt)
            try:
                if action == "hang":
                    time.sleep(HANG_SECONDS)
                    return
                if action == "html":  # a gateway's page instead of the API's JSON
                    self._send(200, "text/html", b"<html><body>502 Bad Gateway</body></html>")
                    return
                if action == "drop":  # the connection closes without an answer, as a crashed server's does
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, int):
                    as_json = teacher.json_errors and action < 500  # a server error page is rarely JSON
                    kind = "application/json" if as_json else "text/plain"
                    payload = json.dumps({"error": {"message": f"scripted {action}"}}).encode() if as_json \
                        else f"scripted failure {action}".encode()
                    self._send(action, kind, payload)
                    return
                time.sleep(teacher.delay)
                content = teacher.answer(prompt)
                reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split())}}
                self._send(200, "application/json", json.dumps(reply).encode())
            except (BrokenPipeError, ConnectionResetError):
                return
            finally:
                seen.left = time.monotonic()

        def _send(self, status: int, kind: str, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    teacher = FakeTeacher(url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    state["teacher"] = teacher
    thread = threading.Thread(target=_serve, args=(teacher, server), daemon=True)
    thread.start()
    yield teacher
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_endpoint() -> str:
    """An endpoint nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


ARITHMETIC = [(7, 5), (12, 30), (3, 4), (100, 23), (9, 9), (41, 1)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSON lines; returns the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arithmetic_prompts(path: Path, pairs: list[tuple[int, int]] = ARITHMETIC) -> Path:
    """A prompts file of `What is A plus B?` questions with their sums in `answer`."""
    return write_jsonl(path, [{"question": f"What is {a} plus {b}?", "answer": str(a + b)} for a, b in pairs])


def make_spec(endpoint: str, prompts_uri: str | None, output: str, **distillation: Any) -> SFTJobSpec:
    """A valid spec whose `distillation` talks to `endpoint`; keyword arguments merge into `distillation`."""
    teacher = {"endpoint": endpoint, "model": "teacher", "concurrency": 2, "timeoutSeconds": 5, "maxRetries": 2,
               **distillation.pop("teacher", {})}
    section: dict[str, Any] = {"teacher": teacher, "temperature": 0, "maxTokens": 64}
    if prompts_uri is not None:
        section["prompts"] = {"uri": prompts_uri, "columnMap": {"question": "prompt"}}
    section.update(distillation)
    spec = {"model": {"source": "/models/student"}, "dataset": {"train": {"uri": "distilled"}},
            "output": {"uri": output}, "distillation": section}
    return SFTJobSpec.model_validate(spec)


Factory = Callable[..., SFTJobSpec]
