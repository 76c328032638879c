"""The teacher's replies, cached under the job's output so that no attempt pays for a request twice.

Every request is addressed by a content hash of what decides its answer (`request_key`: endpoint, model, the
messages, the sampling settings and the sample index). Replies are appended, a part file at a time, under
`<output>/cache/distill/replies/` while they stream in (`ReplyStore`), so an attempt that dies keeps what it
received, and the next one sends only the requests whose key has no reply yet. Nothing is ever taken as
complete because a file exists: a run is complete when every one of its request keys has a reply. The dataset's
key (`dataset_key`) is the hash of all its request keys: `hit`, `partial` or `miss` in the stats.

A part is written whole (an atomic rename on a filesystem, one PUT on S3); a torn line cannot occur, and a line
that does not parse is skipped (re-requested).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Final

from sftjob_trainer import object_store
from sftjob_trainer.distill.teacher_api import Reply, TeacherConfig

log = logging.getLogger(__name__)

CACHE_DIR: Final = "cache/distill"
REPLIES_DIR: Final = f"{CACHE_DIR}/replies"
# Version of the request-key recipe: bumping it invalidates every cached reply.
KEY_VERSION: Final = 1
# Replies buffered before a part is written, and the longest they wait (seconds).
FLUSH_REPLIES: Final = 64
FLUSH_SECONDS: Final = 30.0


def request_key(config: TeacherConfig, messages: Sequence[tuple[str, str]], sample: int) -> str:
    """The content hash that addresses one request's reply.

    Args:
        config: Endpoint, model and sampling settings (timeouts, retries and concurrency do not count).
        messages: The (role, content) turns sent.
        sample: Which of `samplesPerPrompt` answers this is.

    Returns:
        A sha256 hex digest.
    """
    material = {"v": KEY_VERSION, "endpoint": config.endpoint.rstrip("/"), "model": config.model,
                "temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens,
                "messages": [list(m) for m in messages], "sample": sample}
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def dataset_key(keys: Iterable[str]) -> str:
    """The hash of a whole generation: its request keys, in order."""
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode())
    return digest.hexdigest()


class ReplyStore:
    """Cached replies of one job: read once, appended part by part."""

    def __init__(self, output_uri: str, flush_replies: int = FLUSH_REPLIES, flush_seconds: float = FLUSH_SECONDS):
        """Open the store of a job's output.

        Args:
            output_uri: The job's output directory (local path or s3://).
            flush_replies: Replies buffered before a part is written.
            flush_seconds: The longest a reply waits in the buffer.
        """
        self.root = object_store.join(output_uri, REPLIES_DIR)
        self.flush_replies = flush_replies
        self.flush_seconds = flush_seconds
        self._pending: list[Reply] = []
        self._since = time.monotonic()

    def load(self) -> dict[str, Reply]:
        """Every cached reply by key (a reply stored twice: the later part wins)."""
        replies: dict[str, Reply] = {}
        for name in object_store.list_files(self.root):
            if not name.endswith(".jsonl"):
                continue
            data = object_store.read_bytes(object_store.join(self.root, name))
            for line in data.decode("utf-8", "replace").splitlines():
                try:
                    reply = Reply.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("skipping an unreadable line of %s", name)
                    continue
                replies[reply.key] = reply
        return replies

    def add(self, replies: Sequence[Reply]) -> None:
        """Buffer replies; a part is written once enough are buffered or the oldest waited long enough."""
        if not self._pending:
            self._since = time.monotonic()
        self._pending.extend(replies)
        if len(self._pending) >= self.flush_replies or time.monotonic() - self._since >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered replies as one part file."""
        if not self._pending:
            return
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        body = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in self._pending)
        object_store.write_bytes(object_store.join(self.root, name), body.encode())
        self._pending = []
