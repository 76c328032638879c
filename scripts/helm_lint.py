"""Lint the Helm chart with real Helm (helm-sdkpy bundles it), optionally with extra values files.

Runs under the small Python 3.12 environment that `scripts/setup-deploy-tools.sh` creates
(helm-sdkpy needs 3.12; the project itself targets 3.11). helm-sdkpy's lint takes only a chart
path, so `--values` files are merged over the chart's values.yaml the way `helm lint -f` does
(maps merge key by key, everything else is replaced) in a temporary copy of the chart.

Helm's lint result carries the severity and the path of each finding but not its message text:
the findings are printed as `SEVERITY path`, and a path narrows which file to look at.

Usage:
    python scripts/helm_lint.py helm [--values FILE ...] [--without-dependencies] [--strict] [--json]

Exit codes: 0 no error (and no warning with --strict), 1 lint findings, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

# Helm's support.Severity values (pkg/lint/support): UnknownSev, InfoSev, WarningSev, ErrorSev.
SEVERITY_NAMES = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
WARNING = 2
ERROR = 3


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` over `base` as Helm merges a values file over a chart's values.

    Args:
        base: The values so far.
        override: The values of the next file.

    Returns:
        A new dict: maps merged key by key, lists and scalars taken from `override`.
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def prepare_chart(chart: Path, values_files: list[Path], without_dependencies: bool, workdir: Path) -> Path:
    """Copy the chart into `workdir` with the values files merged into its values.yaml.

    Args:
        chart: The chart directory.
        values_files: Values files applied in order, like repeated `helm lint -f`.
        without_dependencies: Drop Chart.yaml's dependencies (to tell their warning from others).
        workdir: An empty directory for the copy.

    Returns:
        The path of the copy.
    """
    copy = workdir / chart.resolve().name
    shutil.copytree(chart, copy)
    if values_files:
        values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
        for path in values_files:
            values = merge_values(values, yaml.safe_load(path.read_text()) or {})
        (copy / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    if without_dependencies:
        metadata = yaml.safe_load((copy / "Chart.yaml").read_text())
        metadata.pop("dependencies", None)
        (copy / "Chart.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    return copy


def lint(chart: Path) -> list[tuple[int, str]]:
    """Run Helm's lint on a chart directory.

    Args:
        chart: The chart directory.

    Returns:
        One `(severity, path)` per finding, in Helm's order.
    """
    from helm_sdkpy import Configuration
    from helm_sdkpy.chart import Lint

    result = asyncio.run(Lint(Configuration()).run(str(chart)))
    root = str(chart)
    findings = []
    for message in result.get("Messages") or []:
        path = str(message.get("Path", ""))
        # Helm names chart-level findings by the chart's absolute path: show them as ".".
        findings.append((int(message.get("Severity", 0)), "." if path == root else path))
    return findings


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments without the program name (default: sys.argv[1:]).

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart", type=Path)
    parser.add_argument("--values", "-f", type=Path, action="append", default=[], help="a values file (repeatable)")
    parser.add_argument("--without-dependencies", action="store_true", help="lint without Chart.yaml dependencies")
    parser.add_argument("--strict", action="store_true", help="fail on warnings too")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = parser.parse_args(argv)
    for path in [args.chart / "Chart.yaml", *args.values]:
        if not path.is_file():
            print(f"helm_lint: {path} does not exist", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="helm-lint-") as workdir:
        copy = prepare_chart(args.chart, args.values, args.without_dependencies, Path(workdir))
        findings = lint(copy)
    if args.json:
        print(json.dumps([{"severity": SEVERITY_NAMES.get(s, str(s)), "path": p} for s, p in findings]))
    else:
        for severity, path in findings:
            print(f"{SEVERITY_NAMES.get(severity, str(severity))} {path}")
    threshold = WARNING if args.strict else ERROR
    failed = [f for f in findings if f[0] >= threshold]
    label = " ".join(str(p) for p in args.values) or "default values"
    print(f"helm lint {args.chart} ({label}): {len(findings)} findings, {len(failed)} failing", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
