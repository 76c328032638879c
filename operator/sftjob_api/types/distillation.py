"""Distillation (`spec.distillation`): a teacher model writes the training data.

What it generated and kept is reported as `status.distillation` (`DistillationStats`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from sftjob_api.base import ApiModel, CelRule, Name, StorageUri, Text
from sftjob_api.types.common import HttpUrl, SecretReference

# `dataset.train.uri` of a job with `distillation`: the job trains on the teacher's answers, which the trainer
# writes to `<job output>/data/distilled.jsonl` before training (a reserved name, never read as a path).
DISTILLED_TRAIN_URI = "distilled"


class TeacherSpec(ApiModel):
    """The model that answers the prompts: any OpenAI-compatible chat-completions endpoint."""

    endpoint: HttpUrl
    """Base URL of the OpenAI-compatible API, up to and including `/v1` (vLLM, SGLang, a hosted API,
    `transformers serve`), e.g. `http://vllm.llm.svc:8000/v1`. Requests go to `<endpoint>/chat/completions`."""

    model: Name
    """The teacher model's name at the endpoint."""

    secret_ref: SecretReference | None = None
    """Secret holding the API key as `OPENAI_API_KEY`, sent as a bearer token. The trainer reads it from
    `SFTJOB_TEACHER_API_KEY`, else `OPENAI_API_KEY`; it never appears in the resource, the RayJob, logs, errors
    or artifacts. Unset: no Authorization header (a server without authentication)."""

    concurrency: int = Field(default=8, ge=1, le=1024)
    """Requests in flight at most, across the Ray cluster (Ray Data actors x requests per actor)."""

    timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    """Timeout of one request, connection included; a request that takes longer counts as failed and is
    retried."""

    max_retries: int = Field(default=4, ge=0, le=10)
    """Retries of one request that times out, cannot connect, or is answered 408, 429 or 5xx, with exponential
    backoff (1, 2, 4, ... s). When one request has spent them, the attempt fails with the retryable
    `TeacherUnavailable`; what was generated is kept, and the next attempt continues from it."""


class SelfInstructSpec(ApiModel):
    """Self-Instruct: grow new instructions from a few seed tasks with the teacher, then answer them."""

    seed_tasks: StorageUri
    """A file of seed tasks (jsonl, json, parquet or csv), one per row in an `instruction` or `prompt` column
    (Alpaca's `input` is appended to the instruction). A few dozen diverse tasks is typical (Self-Instruct
    started from 175)."""

    count: int = Field(ge=1, le=50_000)
    """How many new instructions to generate (the seed tasks are not answered themselves)."""

    similarity_threshold: float = Field(default=0.7, gt=0, le=1)
    """A generated instruction whose ROUGE-L F1 with any instruction already in the pool (seeds included) is
    above this is a near-duplicate and dropped (Self-Instruct's 0.7)."""

    evolve: Literal["deeper", "broader"] | None = None
    """Evol-Instruct: rewrite every generated instruction once with a fixed prompt, `deeper` (harder: more
    constraints, more reasoning steps) or `broader` (a new, rarer task of the same domain). Unset: no rewrite."""


class PromptsSpec(ApiModel):
    """The prompts the teacher answers: a file, or instructions grown from seed tasks (`generate`)."""

    cel_rules = (
        CelRule(
            rule="has(self.uri) != has(self.generate)",
            message="set exactly one of uri (a prompts file) and generate (Self-Instruct from seed tasks)",
            field_path=".uri",
        ),
    )

    uri: StorageUri | None = None
    """The prompts file (`s3://bucket/key` or a path): jsonl, json, parquet or csv."""

    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    """File format. `auto` uses the file extension."""

    prompt_schema: Literal["auto", "prompt", "alpaca", "messages"] = Field(default="auto", alias="schema")
    """Row layout: `prompt` (a string column), `alpaca` (`instruction`, optional `input`) or `messages`
    (a conversation; turns after its last user turn are dropped, so an SFT dataset can be re-answered).
    `auto` detects it from the columns, in that order of precedence: messages, instruction, prompt."""

    column_map: dict[str, Name] = Field(default_factory=dict, max_length=32)
    """Renames applied to every row first: `{fileColumn: expectedColumn}`, e.g. `{question: prompt}`."""

    limit: int | None = Field(default=None, ge=1)
    """Answer only the first N prompts of the file (try a recipe on a few before paying for all)."""

    generate: SelfInstructSpec | None = None
    """Self-Instruct instead of a prompts file: the prompts are instructions the teacher writes."""

    @model_validator(mode="after")
    def _one_source(self) -> PromptsSpec:
        if (self.uri is None) == (self.generate is None):
            raise ValueError("uri: set exactly one of uri (a prompts file) and generate (Self-Instruct from seed "
                             "tasks)")
        return self


class VerifierSpec(ApiModel):
    """Rejection sampling: keep an answer only when its final answer equals the prompt's reference answer."""

    cel_rules = (
        CelRule(
            rule="self.extract != 'regex' || has(self.regex)",
            message="extract regex needs regex (the pattern whose first group is the final answer)",
            field_path=".regex",
        ),
    )

    extract: Literal["boxed", "regex"] = "boxed"
    """How the final answer is taken from the teacher's answer: the last `\\boxed{...}` (braces balanced), or
    the last match of `regex`. The reference is read the same way when it matches, else used whole."""

    regex: Text | None = None
    """Pattern for `extract: regex` (Python syntax); its first group, if it has one, is the answer."""

    reference_column: Name = "answer"
    """The prompts file's column holding the reference answer (after `prompts.columnMap`). Answers are compared
    trimmed, without `$`, thousands separators or a trailing period, and as numbers when both parse as numbers."""

    @model_validator(mode="after")
    def _regex_given(self) -> VerifierSpec:
        if self.extract == "regex" and self.regex is None:
            raise ValueError("regex: extract regex needs regex (the pattern whose first group is the final answer)")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"regex: not a valid regular expression: {err}") from None
        return self


class DistillDedupSpec(ApiModel):
    """Duplicate removal on the generated (prompt, answer) pairs."""

    exact: bool = True
    """Drop a pair whose prompt and answer equal an earlier pair's, after whitespace and case normalisation."""

    near: bool = True
    """Drop a pair whose text is a near-duplicate of an earlier kept pair: MinHash (128 permutations) of word
    5-gram shingles, indexed by LSH, above `nearThreshold` estimated Jaccard similarity."""

    near_threshold: float = Field(default=0.8, gt=0, le=1)
    """Jaccard similarity of the shingle sets above which two pairs are near-duplicates."""


class DecontaminationSpec(ApiModel):
    """Drop generated rows that overlap the data the model is evaluated on (word n-gram overlap)."""

    enabled: bool = True
    """Compare against `dataset.validation`, the files of `evaluation.tasks` and `uris`. Nothing to compare
    against (e.g. `validationSplit` only): nothing is dropped."""

    ngram: int = Field(default=13, ge=1, le=64)
    """A row is contaminated when one of its word n-grams (lowercased words) appears in an evaluation text; a
    text shorter than n words counts as one n-gram of its own length (13: GPT-3's decontamination)."""

    uris: list[StorageUri] = Field(default_factory=list, max_length=16)
    """More files to decontaminate against (jsonl, json, parquet or csv; every string in a row counts)."""


class DistillationFilters(ApiModel):
    """What makes a teacher's answer a training example. Every drop is counted by reason."""

    cel_rules = (
        CelRule(
            rule="!has(self.maxLength) || self.maxLength >= self.minLength",
            message="maxLength must be at least minLength",
            field_path=".maxLength",
        ),
    )

    verifier: VerifierSpec | None = None
    """Rejection sampling against a reference answer (unset: answers are not checked)."""

    dedup: DistillDedupSpec = Field(default_factory=DistillDedupSpec)
    """Exact and near-duplicate removal."""

    min_length: int = Field(default=1, ge=0, le=1_000_000)
    """Shortest answer kept, in characters (reasoning not counted)."""

    max_length: int | None = Field(default=None, ge=1, le=10_000_000)
    """Longest answer kept, in characters (reasoning not counted). Unset: no bound. An answer the teacher cut
    at `maxTokens` is always dropped (`truncated`)."""

    refusals: bool = True
    """Drop refusals: answers that start with or contain a known refusal phrase ("I'm sorry, but I can't",
    "As an AI language model", ...; the list is in docs/distillation.md)."""

    decontaminate: DecontaminationSpec = Field(default_factory=DecontaminationSpec)
    """Drop rows that overlap evaluation data."""

    @model_validator(mode="after")
    def _length_bounds(self) -> DistillationFilters:
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(f"maxLength: must be at least minLength ({self.min_length})")
        return self


class DistillationSpec(ApiModel):
    """Generate the training data with a teacher model first, then train on it.

    The teacher's answers, filtered, become `<output>/data/distilled.jsonl` (the messages schema), with their
    statistics in `data/distilled.stats.json`; `dataset.train.uri` must be `distilled`. Generation is cached by
    a content hash of the prompts, the teacher and the sampling settings, so a retried attempt never pays for it
    twice, and continues from what an interrupted attempt generated.
    """

    cel_rules = (
        CelRule(
            # double(): a temperature written as an integer (0, 1) decodes as one.
            rule="self.samplesPerPrompt == 1 || double(self.temperature) > 0.0",
            message="samplesPerPrompt above 1 needs temperature above 0 (greedy decoding repeats one answer)",
            field_path=".samplesPerPrompt",
        ),
        CelRule(
            rule="!has(self.filters) || !has(self.filters.verifier) || has(self.prompts.uri)",
            message="filters.verifier compares with a reference column of a prompts file: set prompts.uri",
            field_path=".filters.verifier",
        ),
    )

    teacher: TeacherSpec
    """The endpoint and model that answer."""

    prompts: PromptsSpec
    """What the teacher answers."""

    system_prompt: Text | None = None
    """A system message sent before every prompt, e.g. Orca's "explain step by step, justify your answer".
    It is sent to the teacher only, never trained on; a prompt row's own system message wins."""

    temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature of the teacher (0: greedy)."""

    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling: the smallest token set whose probability reaches this."""

    max_tokens: int = Field(default=2048, ge=1, le=262_144)
    """Longest answer in tokens (reasoning included); a cut answer is dropped as `truncated`."""

    samples_per_prompt: int = Field(default=1, ge=1, le=64)
    """Answers requested per prompt (one request each): with a verifier, more samples keep more prompts
    (rejection sampling); the kept answers of one prompt all train."""

    keep_reasoning: bool = True
    """Keep the teacher's reasoning (`reasoning_content` / `reasoning` of the reply, or a leading
    `<think>...</think>` block) as the assistant message's `reasoning` field, which `dataset.reasoning` then
    keeps or drops. False: the reasoning is discarded and only the answer is stored."""

    filters: DistillationFilters = Field(default_factory=DistillationFilters)
    """Verification, duplicates, length bounds, refusals and decontamination."""

    @model_validator(mode="after")
    def _sampling_and_verifier(self) -> DistillationSpec:
        if self.samples_per_prompt > 1 and self.temperature == 0:
            raise ValueError("samplesPerPrompt: above 1 needs temperature above 0 (greedy decoding repeats one "
                             "answer)")
        if self.filters.verifier is not None and self.prompts.uri is None:
            raise ValueError("filters: the verifier compares with a reference column of a prompts file: set "
                             "prompts.uri")
        return self


class DistillationStats(ApiModel):
    """What a distillation run generated and kept: `data/distilled.stats.json`, for the status and the manifest."""

    uri: StorageUri | None = None
    """The distilled training file (`<output>/data/distilled.jsonl`)."""

    complete: bool = False
    """Whether every request was answered; a partial run (the teacher went away) is never trained on."""

    prompts: int = Field(default=0, ge=0)
    """Prompts answered (after `limit`; for Self-Instruct, the instructions generated)."""

    instructions_generated: int | None = Field(default=None, ge=0)
    """Self-Instruct: new instructions kept in the pool (after the ROUGE-L filter)."""

    instructions_dropped: int | None = Field(default=None, ge=0)
    """Self-Instruct: generated instructions dropped as near-duplicates, unparseable or empty."""

    requests: int = Field(default=0, ge=0)
    """Requests this run sent to the teacher (retries of one request count once)."""

    cached_requests: int = Field(default=0, ge=0)
    """Answers reused from an earlier run's cache instead of being requested again."""

    responses: int = Field(default=0, ge=0)
    """Answers the filters saw (prompts x samplesPerPrompt when complete)."""

    kept: int = Field(default=0, ge=0)
    """Answers kept as training examples."""

    dropped: dict[str, int] = Field(default_factory=dict, max_length=32)
    """Dropped answers by reason: teacher_error, empty, truncated, too_short, too_long, refusal, no_answer,
    wrong_answer, contaminated, duplicate, near_duplicate."""

    prompt_tokens: int = Field(default=0, ge=0)
    """Prompt tokens of every answer used (as the teacher counted them), cached ones included."""

    completion_tokens: int = Field(default=0, ge=0)
    """Completion tokens of every answer used (reasoning included)."""

    seconds: float = Field(default=0.0, ge=0)
    """Wall time of this run's generation (cache hits cost none)."""

    cache: Name | None = None
    """`hit <key>` (every answer reused), `partial <key>` (some reused) or `miss <key>`; `<key>` is the first 12
    hex digits of the content hash of prompts, teacher and sampling settings."""

    sha256: Name | None = None
    """Digest of `distilled.jsonl`."""
