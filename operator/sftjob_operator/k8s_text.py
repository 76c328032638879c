"""Condition reasons and messages in the forms Kubernetes accepts and `kubectl describe` shows well. Pure."""

from __future__ import annotations

import re

_REASON_CHARS = re.compile(r"[^A-Za-z0-9_]")
# Kubernetes accepts longer condition messages, but a status that `kubectl describe` shows stays readable.
MAX_MESSAGE = 1024


def camel_reason(text: str, fallback: str = "Unknown") -> str:
    """`text` as a condition reason (the API server rejects any but `[A-Za-z][A-Za-z0-9_]*`)."""
    cleaned = _REASON_CHARS.sub("", text)
    return cleaned if cleaned and cleaned[0].isalpha() else fallback


def clip(text: str) -> str:
    """`text` cut to `MAX_MESSAGE` characters, with `...` where it was cut."""
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


__all__ = ["MAX_MESSAGE", "camel_reason", "clip"]
