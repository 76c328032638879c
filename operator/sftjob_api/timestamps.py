"""RFC 3339 times as the API carries them: UTC, second precision, a `Z` suffix (`2024-05-01T12:00:00Z`).

Kubernetes writes its own times this way (`creationTimestamp`, a condition's `lastTransitionTime`), and the
status and `progress.json` follow it, so one format and one parser serve the operator and the trainer.
"""

from __future__ import annotations

import datetime as dt


def format_rfc3339(moment: dt.datetime) -> str:
    """`moment` in UTC with second precision and a `Z` suffix, as Kubernetes writes times.

    Args:
        moment: The time; a naive one is taken as local time (Python's `astimezone` rule).

    Returns:
        E.g. `2024-05-01T12:00:00Z`.
    """
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_rfc3339(seconds: float) -> str:
    """A Unix time (e.g. `time.time()`) as `format_rfc3339` writes it.

    Args:
        seconds: Seconds since the epoch.

    Returns:
        E.g. `2024-05-01T12:00:00Z`.
    """
    return format_rfc3339(dt.datetime.fromtimestamp(seconds, tz=dt.UTC))


def parse_rfc3339(value: str | None) -> dt.datetime | None:
    """Parse an RFC 3339 time (`Z` or a numeric offset); one without an offset is taken as UTC.

    Args:
        value: The text, e.g. `2024-05-01T12:00:00Z`.

    Returns:
        The aware datetime; None when `value` is absent, empty or malformed.
    """
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


__all__ = ["epoch_rfc3339", "format_rfc3339", "parse_rfc3339"]
