"""`sftjob render job.yaml [--attempt N]`: print the RayJob(s) the operator would create (GitOps debugging).

One RayJob per SFTJob document, for the given attempt (default 1), with the operator's settings
read from the same environment variables the operator reads (`SFTJOB_TRAINER_IMAGE`,
`SFTJOB_DEFAULT_WORKER_CPU`, ...). Two differences from what the operator creates: the
ownerReference is absent (the SFTJob has no uid before the API server stores it), and so is the
namespace when the file names none. Exit codes: 0 printed, 2 invalid input, 1 internal error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sftjob_cli.common import EXIT_INVALID, EXIT_OK


def register(commands: Any) -> None:
    """Add the `render` subcommand."""
    render = commands.add_parser("render", help="print the RayJob(s) the operator would create for an SFTJob file")
    render.add_argument("file", metavar="FILE", help="SFTJob YAML file ('-' reads stdin)")
    render.add_argument("--attempt", type=int, default=1, metavar="N", help="attempt number (default 1)")
    render.set_defaults(handler=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    from sftjob_api.types import parse_sftjob
    from sftjob_cli.common import dump_yaml, read_valid_documents
    from sftjob_operator.rayjob import build_rayjob, check_renderable
    from sftjob_operator.settings import Settings, SettingsError

    if args.attempt < 1:
        print("--attempt: must be 1 or more", file=sys.stderr)
        return EXIT_INVALID
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"sftjob render: {err}", file=sys.stderr)
        return EXIT_INVALID
    documents = read_valid_documents(args.file)
    if documents is None:
        return EXIT_INVALID
    problems = []
    rendered = []
    for document in documents:
        job = parse_sftjob(document.data)
        for problem in check_renderable(job):
            where = document.line_of(problem.path)
            problems.append(f"{args.file}:{where}: {problem.field}: {problem.message}" if where else problem.message)
        rendered.append(build_rayjob(job, args.attempt, settings))
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write("---\n".join(dump_yaml(rayjob) for rayjob in rendered))
    return EXIT_OK
