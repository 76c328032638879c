"""The human-readable form of a data report (`sftjob data inspect` without --json) and of its problems."""

from __future__ import annotations

import sys
from typing import Any

# Terminal highlight of trained tokens (reverse video green) and the plain-text markers used otherwise.
_ON, _OFF = "\x1b[30;42m", "\x1b[0m"
_OPEN, _CLOSE = "[[", "]]"
# A rendered sample longer than this is cut in the human output (the JSON keeps it whole).
_SAMPLE_CHARS = 1500


def problem_line(error: dict[str, Any]) -> str:
    """A problem of `DataReport.errors` as `file:line: field: message`."""
    where = error.get("file") or "(dataset)"
    if error.get("line") is not None:
        where += f":{error['line']}"
    field = f" {error['field']}:" if error.get("field") else ""
    return f"{where}:{field} {error['message']}"



def print_report(report: Any, spec: Any, color: bool) -> None:
    """Print the report to stdout, its samples with the trained tokens highlighted (`color`) or bracketed."""
    out = sys.stdout.write
    pct = report.length_percentiles
    auto = (" (auto: longest, packing)" if spec.packing else " (auto: p99)") if spec.max_seq_length == "auto" else ""
    out(f"file:        {report.file}\n")
    out(f"format:      {report.format}    chat template: {report.chat_template}    trainOn: {report.train_on}\n")
    out(f"tokenizer:   {report.tokenizer}\n")
    out(f"rows:        {report.rows}    train examples: {report.train_examples}"
        f"    validation examples: {report.validation_examples}\n")
    dropped = ", ".join(f"{reason} {n}" for reason, n in report.dropped.items()) or "none"
    out(f"dropped:     {dropped}\n")
    out(f"duplicates:  {report.duplicates}    truncated: {report.truncated}\n")
    out(f"tokens:      {report.tokens}    trainable: {report.trainable_tokens} ({report.trainable_fraction:.1%})"
        f"    EOS trained: {'yes' if report.eos_trained else 'NO'}\n")
    out(f"length:      p50 {pct.get('p50', 0)}    p95 {pct.get('p95', 0)}    max {pct.get('max', 0)}"
        f"    maxSeqLength {report.max_seq_length}{auto}\n")
    if report.sources:
        out(_mixture_table(report.sources))
    for warning in report.warnings:
        out(f"warning:     {warning}\n")
    for i, sample in enumerate(report.samples, start=1):
        legend = "highlighted" if color else f"between {_OPEN} and {_CLOSE}"
        out(f"\n--- example {i} (line {sample.line}); trained tokens {legend} ---\n")
        text = "".join((f"{_ON}{t}{_OFF}" if color else f"{_OPEN}{t}{_CLOSE}") if trained else t
                       for t, trained in sample.segments)
        out((text if len(text) <= _SAMPLE_CHARS else text[:_SAMPLE_CHARS] + " …") + "\n")


def _mixture_table(sources: list[Any]) -> str:
    """The sources of a mixture, one line each: what was read, asked and drawn."""
    header = ("source", "files", "rows", "usable", "asked", "drawn", "share", "tokens", "validation")
    rows = [header]
    for s in sources:
        asked = (f"weight {s.weight:g}" if s.weight is not None
                 else f"samples {s.samples}" if s.samples is not None else "all")
        rows.append((s.name, f"{s.files}/{s.files_matched}", str(s.rows), str(s.available), asked,
                     str(s.train_examples), f"{s.proportion:.1%}", str(s.tokens), str(s.validation_examples)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "mixture:     " + "\n             ".join(lines) + "\n"
