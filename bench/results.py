"""bench/RESULTS.md: each bench owns one `## ` section and replaces only that one."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(path: Path, heading: str, writer: str, body: list[str]) -> None:
    """Replace the section that starts with `heading` in `path`, keeping every other section.

    A first write puts it right after the CPU throughput table (the file's head), before the other
    benches' sections: bench/ray_overhead.py rewrites everything from its own heading on.

    Args:
        path: The results file.
        heading: The section's heading line without its suffix, e.g. `## GPU suite`.
        writer: The command that writes it, shown after the heading.
        body: The section's lines below the heading.
    """
    text = path.read_text() if path.exists() else ""
    head, found, rest = text.partition("\n" + heading)
    if found:
        after = rest.find("\n## ")
        tail = rest[after:] if after >= 0 else ""
    else:
        first = text.find("\n## ")
        head, tail = (text[:first], text[first:]) if first >= 0 else (text, "")
    section = "\n".join([f"{heading} (written by {writer})", "", *body])
    path.write_text(head.rstrip() + "\n\n" + section.rstrip() + "\n" + tail)
