"""Which conversations are trained: the quality filter, exact de-duplication and the held-out split."""

from __future__ import annotations

import random

from sftjob_trainer.data.conversation import Conversation


def drop_reason(conv: Conversation, train_on: str) -> str | None:
    """Why the quality filter drops a row, or None to keep it."""
    if conv.kind == "text":
        return "empty_text" if not conv.messages[0].content.strip() else None
    assistants = [conv.messages[i] for i in conv.assistant_indexes]
    if not assistants:
        return None if train_on == "all" else "no_assistant_turn"
    if any(not m.content.strip() and not m.tool_calls and not m.reasoning.strip() for m in assistants):
        return "empty_response"
    selected = assistants[-1:] if train_on == "last_assistant" else assistants
    if train_on != "all" and not any(m.weight for m in selected):
        return "no_trained_turn"
    return None


def quality_filter(conversations: list[Conversation], train_on: str,
                   drops: dict[str, list[int]] | None = None) -> list[Conversation]:
    """The rows the quality filter keeps; the lines of the others go to `drops` by reason."""
    kept: list[Conversation] = []
    for conv in conversations:
        reason = drop_reason(conv, train_on)
        if reason is None:
            kept.append(conv)
        elif drops is not None:
            drops.setdefault(reason, []).append(conv.line)
    return kept


def dedup(conversations: list[Conversation], enabled: bool,
          drops: dict[str, list[int]] | None = None) -> tuple[list[Conversation], int]:
    """(the first of each group of exact copies, or all when not `enabled`; how many copies there were).

    The lines of the dropped copies go to `drops`.
    """
    seen: set[str] = set()
    kept, duplicates = [], 0
    for conv in conversations:
        key = conv.key()
        if key in seen:
            duplicates += 1
            if enabled:
                if drops is not None:
                    drops.setdefault("duplicate", []).append(conv.line)
                continue
        seen.add(key)
        kept.append(conv)
    return kept, duplicates


def split_held_out(conversations: list[Conversation], sources: int, fraction: float,
                   seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """(training, held out): `fraction` of each source's rows, at least one and never all, in a seeded choice."""
    train: list[Conversation] = []
    held_out: list[Conversation] = []
    for index in range(sources):
        group = [c for c in conversations if c.source == index] if sources > 1 else conversations
        if len(group) < 2:  # one example each side at least
            train.extend(group)
            continue
        order = list(range(len(group)))
        # Source 0 splits with the seed itself, so a single file splits as it always has.
        random.Random(seed if index == 0 else f"{seed}:split:{index}").shuffle(order)  # noqa: S311 - a seeded split
        n_val = min(len(group) - 1, max(1, round(len(group) * fraction)))
        held = set(order[:n_val])
        held_out.extend(c for i, c in enumerate(group) if i in held)
        train.extend(c for i, c in enumerate(group) if i not in held)
    return train, held_out
