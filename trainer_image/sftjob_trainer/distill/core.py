"""`distill()`: prompts in, teacher answers out, filtered, written as the job's training file.

Steps: (Self-Instruct only) grow instructions from the seed tasks; ask the teacher for `samplesPerPrompt`
answers per prompt; filter; write under the job's output

- `data/distilled.jsonl`: the kept examples in the messages schema (the teacher's reasoning, with
  `keepReasoning`, in the assistant message's `reasoning` field); the job trains on it;
- `data/distilled.rejected.jsonl`: the dropped answers, each with its `reason`, to inspect the filters;
- `data/distilled.stats.json`: `DistillationStats` (counts per drop reason, requests, tokens, seconds, cache).

Every reply is cached under `cache/distill/` as it arrives (see `cache`), so a retried attempt sends only what is
missing, and a complete cache sends nothing. A run whose teacher goes away writes the stats with
`complete: false`, never `distilled.jsonl`, and raises the retryable `TeacherUnavailable`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sftjob_api.codes import ErrorCode
from sftjob_api.pod_env import OPENAI_API_KEY, TEACHER_KEY_ENV
from sftjob_api.types import DistillationSpec, DistillationStats, SFTJobSpec, TrainingData
from sftjob_trainer import object_store
from sftjob_trainer.distill import cache, filters, prompts, self_instruct, teacher
from sftjob_trainer.distill.teacher_api import Reply, Request, TeacherConfig
from sftjob_trainer.trainer_error import TrainerError

log = logging.getLogger(__name__)

DISTILLED_FILE: Final = "data/distilled.jsonl"
REJECTED_FILE: Final = "data/distilled.rejected.jsonl"
STATS_FILE: Final = "data/distilled.stats.json"
# Where the teacher's key is read from: the operator maps `teacher.secretRef`'s OPENAI_API_KEY to the first, so
# that a judge's OPENAI_API_KEY from another Secret cannot collide with it.
API_KEY_ENVS: Final = (TEACHER_KEY_ENV, OPENAI_API_KEY)
# Self-Instruct and Evol-Instruct sample for diversity whatever the answers' settings (Self-Instruct used 0.7-1.0).
INSTRUCTION_TEMPERATURE: Final = 1.0
INSTRUCTION_TOP_P: Final = 1.0
INSTRUCTION_MAX_TOKENS: Final = 1024


@dataclass(frozen=True)
class GenerationProgress:
    """Where generation stands, for progress.json (phase `Generating`) and progress bars."""

    stage: str
    """`answers`, `instructions round N` or `evolve deeper|broader`."""
    done: int
    """Requests of this stage answered, cached ones included."""
    total: int
    """Requests of this stage."""
    completion_tokens: int
    """Completion tokens received from the teacher in this stage, this run."""
    tokens_per_second: float | None
    """Completion tokens per second in this stage, this run (None before the first reply)."""
    eta_seconds: float | None
    """Time left in this stage at the current rate (None before the first reply)."""
    requests: int
    """Requests sent to the teacher so far by this run, all stages."""
    cached: int
    """Replies reused from the cache so far by this run, all stages."""

    @property
    def percentage(self) -> float:
        """Requests done of this stage, in percent."""
        return 100.0 * self.done / self.total if self.total else 100.0


@dataclass(frozen=True)
class DistillOptions:
    """Knobs that are not part of the API (tests shrink the sleeps)."""

    retry_base_s: float = 1.0
    """Backoff base of the HTTP stage's retries (it sleeps base * 2**k after the k-th failed try)."""
    flush_replies: int = cache.FLUSH_REPLIES
    """Replies buffered before a cache part is written."""
    flush_seconds: float = cache.FLUSH_SECONDS
    """The longest a reply waits before it is written to the cache."""
    progress_interval_s: float = 2.0
    """Least seconds between two progress callbacks within a stage (its first and last are always sent)."""


@dataclass(frozen=True)
class DistillResult:
    """A finished distillation: the training file and its statistics."""

    uri: str
    """`<output>/data/distilled.jsonl`: train on this (messages schema, jsonl)."""
    stats: DistillationStats
    """Counts, tokens, seconds and cache state (also in `stats_uri`)."""
    stats_uri: str
    """`<output>/data/distilled.stats.json`."""


def api_key_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The teacher's API key from `SFTJOB_TEACHER_API_KEY`, else `OPENAI_API_KEY` (None when both are unset)."""
    env = os.environ if environ is None else environ
    return next((env[name] for name in API_KEY_ENVS if env.get(name)), None)


def with_distilled_train(spec: SFTJobSpec, result: DistillResult) -> SFTJobSpec:
    """The spec the training stage runs: `dataset.train` is the distilled file, and `distillation` is unset.

    The result is a valid spec (no `distilled` placeholder left), so workers that validate it again accept it.
    """
    dataset = spec.dataset.model_copy(update={"train": TrainingData(uri=result.uri, format="jsonl")})
    return spec.model_copy(update={"dataset": dataset, "distillation": None})


class _Teacher:
    """The teacher behind the cache: asks only for what has no reply yet, and reports progress."""

    def __init__(self, config: TeacherConfig, api_key: str | None, store: cache.ReplyStore,
                 progress: Callable[[GenerationProgress], None] | None, options: DistillOptions):
        self.config = config
        self.api_key = api_key
        self.store = store
        self.replies = store.load()
        self.progress = progress
        self.options = options
        self.sent = 0
        self.reused = 0
        self.keys: list[str] = []
        self.used: dict[str, Reply] = {}

    @staticmethod
    def requests(turns: Sequence[tuple[tuple[str, str], ...]], config: TeacherConfig, samples: int = 1,
                 salt: str = "") -> list[Request]:
        """One request per turns and sample.

        With `salt`, every request's key also holds `salt` and its position (Self-Instruct: two requests of a
        round may show the same examples, and must still be two requests).
        """
        return [Request(key=cache.request_key(config, (*m, ("#", f"{salt}#{i}")) if salt else m, s), messages=m)
                for i, m in enumerate(turns) for s in range(samples)]

    def ask(self, requests: Sequence[Request], stage: str, config: TeacherConfig | None = None) -> list[Reply]:
        config = config or self.config
        self.keys.extend(r.key for r in requests)
        missing = list({r.key: r for r in requests if r.key not in self.replies}.values())
        self.reused += len({r.key for r in requests}) - len(missing)
        total, start = len(requests), time.monotonic()
        counters = {"done": total - len(missing), "tokens": 0, "last": 0.0}

        def report(force: bool = False) -> None:
            now = time.monotonic()
            if self.progress is None or (not force and now - counters["last"] < self.options.progress_interval_s):
                return
            counters["last"] = now
            elapsed, received = now - start, counters["done"] - (total - len(missing))
            rate = received / elapsed if received and elapsed > 0 else None
            self.progress(GenerationProgress(
                stage=stage, done=int(counters["done"]), total=total, completion_tokens=int(counters["tokens"]),
                tokens_per_second=counters["tokens"] / elapsed if received and elapsed > 0 else None,
                eta_seconds=(total - counters["done"]) / rate if rate else None, requests=self.sent,
                cached=self.reused))

        def received(replies: list[Reply]) -> None:
            for reply in replies:
                self.replies[reply.key] = reply
            self.store.add(replies)
            self.sent += len(replies)
            counters["done"] += len(replies)
            counters["tokens"] += sum(r.completion_tokens for r in replies)
            report()

        report(force=True)
        if missing:
            log.info("%s: %d requests (%d cached)", stage, len(missing), total - len(missing))
            try:
                teacher.generate(missing, config, self.api_key, received)
            finally:
                self.store.flush()
        report(force=True)
        lost = [r.key for r in requests if r.key not in self.replies]
        if lost:
            raise TrainerError(ErrorCode.TEACHER_UNAVAILABLE,
                               f"the teacher at {config.endpoint} left {len(lost)} of {total} "
                               "requests without a reply; the next attempt asks for them again",
                               "distillation.teacher.endpoint")
        replies = [self.replies[r.key] for r in requests]
        self.used.update((r.key, r) for r in replies)
        return replies


def _assistant(reply: Reply, keep_reasoning: bool) -> dict[str, str]:
    message = {"role": "assistant", "content": reply.content.strip()}
    if keep_reasoning and reply.reasoning:
        message["reasoning"] = reply.reasoning
    return message


def _jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def _cache_state(asker: _Teacher, complete: bool) -> str:
    key = cache.dataset_key(asker.keys)[:12]
    if asker.sent == 0 and complete:
        return f"hit {key}"
    return f"partial {key}" if asker.reused else f"miss {key}"


def distill(spec: SFTJobSpec, output_uri: str, progress: Callable[[GenerationProgress], None] | None = None, *,
            api_key: str | None = None, options: DistillOptions | None = None) -> DistillResult:
    """Generate, filter and write the job's distilled training data (`spec.distillation`).

    Runs on the driver; the requests go through Ray Data (Ray must be initialised, else Ray Data starts a local
    cluster). Safe to call again after a failure: cached replies are reused, only missing ones are requested.

    Args:
        spec: The job's spec, with `distillation` set (`dataset.validation` and `evaluation.tasks` are read for
            decontamination).
        output_uri: The job's output directory (`<output>/<namespace>/<name>`, local path or s3://).
        progress: Called with a `GenerationProgress` at the start and end of every stage and at most every
            `options.progress_interval_s` in between.
        api_key: The teacher's key; None reads `api_key_from_env()`.
        options: Backoff and flush settings.

    Returns:
        The training file's URI and the statistics.

    Raises:
        TrainerError: `TeacherUnavailable` (retryable: the teacher stayed unreachable; what was generated is kept),
            `AccessDenied`/`InvalidSpec` (the teacher refused the key, or the endpoint/model is wrong),
            `InvalidDataset`/`DatasetUnreadable` (prompts, seed or evaluation files), a storage code, or
            `PreflightFailed` when the filters dropped every answer.
    """
    distillation: DistillationSpec | None = spec.distillation
    if distillation is None:
        raise TrainerError(ErrorCode.INVALID_SPEC, "spec.distillation is not set: nothing to generate", "distillation")
    options = options or DistillOptions()
    api_key = api_key if api_key is not None else api_key_from_env()
    started = time.monotonic()
    config = TeacherConfig.from_spec(distillation, retry_base_s=options.retry_base_s)
    store = cache.ReplyStore(output_uri, options.flush_replies, options.flush_seconds)
    asker = _Teacher(config, api_key, store, progress, options)
    stats = DistillationStats()
    stats_uri = object_store.join(output_uri, STATS_FILE)
    filter_spec = distillation.filters
    try:
        if distillation.prompts.generate is not None:
            grow = distillation.prompts.generate
            seeds = prompts.load_seed_tasks(grow.seed_tasks)
            instruction_config = dataclasses.replace(config, temperature=INSTRUCTION_TEMPERATURE,
                                                     top_p=INSTRUCTION_TOP_P, max_tokens=INSTRUCTION_MAX_TOKENS)

            def ask_texts(turns: Sequence[tuple[tuple[str, str], ...]], stage: str) -> list[str]:
                # Requests of different rounds may show the same examples: the stage salts their keys apart.
                replies = asker.ask(asker.requests(turns, instruction_config, salt=stage), stage, instruction_config)
                return [r.content if not r.error else "" for r in replies]

            grown = self_instruct.grow_instructions(seeds, grow.count, grow.similarity_threshold, ask_texts,
                                                    grow.evolve)
            if not grown.instructions:
                why = dict(grown.dropped) or "no numbered list in the replies"
                raise TrainerError(ErrorCode.PREFLIGHT_FAILED, f"Self-Instruct produced no usable instruction from "
                                   f"{len(seeds)} seed tasks ({why}); check the teacher and "
                                   "distillation.prompts.generate", "distillation.prompts.generate")
            items = [prompts.PromptItem(messages=(("user", text),)) for text in grown.instructions]
            stats.instructions_generated = len(grown.instructions)
            stats.instructions_dropped = sum(grown.dropped.values())
        else:
            reference = filter_spec.verifier.reference_column if filter_spec.verifier else None
            items = prompts.load_prompts(distillation.prompts, reference)
        stats.prompts = len(items)
        answer_turns = [item.with_system(distillation.system_prompt) for item in items]
        answers = asker.ask(asker.requests(answer_turns, config, distillation.samples_per_prompt), "answers")
    except TrainerError:
        stats = stats.model_copy(update=_counters(asker, started, complete=False))
        object_store.write_bytes(stats_uri, json.dumps(stats.to_wire(), indent=2).encode())
        raise
    samples = distillation.samples_per_prompt
    pairs = [(items[i // samples], reply) for i, reply in enumerate(answers)]
    candidates = [filters.Candidate(prompt=item.text, answer=reply.content, reasoning=reply.reasoning,
                                    finish_reason=reply.finish_reason, reference=item.reference, error=reply.error)
                  for item, reply in pairs]
    contamination = None
    if filter_spec.decontaminate.enabled:
        texts = prompts.load_texts(prompts.contamination_sources(spec))
        contamination = filters.ContaminationIndex(texts, filter_spec.decontaminate.ngram) if texts else None
    outcome = filters.apply_filters(candidates, filter_spec, contamination)
    keep = distillation.keep_reasoning
    kept_rows = [{"messages": [{"role": r, "content": c} for r, c in pairs[i][0].messages]
                  + [_assistant(pairs[i][1], keep)]} for i in outcome.kept]
    rejected_rows = [{"reason": reason, "messages": [{"role": r, "content": c} for r, c in pairs[i][0].messages]
                      + [_assistant(pairs[i][1], True)], "reference": pairs[i][0].reference,
                      "finish_reason": pairs[i][1].finish_reason, "error": pairs[i][1].error or None}
                     for i, reason in outcome.dropped]
    data = _jsonl(kept_rows)
    uri = object_store.join(output_uri, DISTILLED_FILE)
    stats = stats.model_copy(update={
        **_counters(asker, started, complete=True), "uri": uri, "complete": True, "responses": len(candidates),
        "kept": len(outcome.kept), "dropped": outcome.counts, "sha256": hashlib.sha256(data).hexdigest()})
    object_store.write_bytes(object_store.join(output_uri, REJECTED_FILE), _jsonl(rejected_rows))
    object_store.write_bytes(stats_uri, json.dumps(stats.to_wire(), indent=2).encode())
    if not outcome.kept:
        raise TrainerError(ErrorCode.PREFLIGHT_FAILED,
                           f"the filters dropped every one of the {len(candidates)} teacher "
                           f"answers ({', '.join(f'{k}: {v}' for k, v in outcome.counts.items())}); see "
                           f"{REJECTED_FILE} and loosen distillation.filters or fix the prompts",
                           "distillation.filters")
    object_store.write_bytes(uri, data)
    log.info("distilled %d of %d answers into %s (dropped %s; %d requests, %d cached, %s)", stats.kept,
             stats.responses, uri, stats.dropped or "none", stats.requests, stats.cached_requests, stats.cache)
    return DistillResult(uri=uri, stats=stats, stats_uri=stats_uri)


def _counters(asker: _Teacher, started: float, complete: bool) -> dict[str, Any]:
    used = asker.used.values()
    return {"requests": asker.sent, "cached_requests": asker.reused, "seconds": round(time.monotonic() - started, 3),
            "prompt_tokens": sum(r.prompt_tokens for r in used), "completion_tokens": sum(r.completion_tokens
                                                                                          for r in used),
            "cache": _cache_state(asker, complete) if asker.keys else None}
