"""The `sftjob` command line: the composition root of the API, the operator and the trainer.

Exit codes: 0 success, 2 invalid input (a message names the field or file:line), 1 an
internal error. No traceback reaches the user; `SFTJOB_DEBUG=1` shows one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from sftjob_cli.common import EXIT_INTERNAL, EXIT_INVALID, EXIT_OK, dump_yaml, read_valid_documents


def _cmd_crd(_: argparse.Namespace) -> int:
    from sftjob_api.crd import render_crd

    sys.stdout.write(dump_yaml(render_crd()))
    return EXIT_OK


def _cmd_reference(_: argparse.Namespace) -> int:
    from sftjob_api.reference import render_reference

    sys.stdout.write(render_reference())
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        documents = read_valid_documents(path)
        if documents is None:
            failed = True
            continue
        # The spec is valid: check the dataset it names, where it can be read from here.
        from sftjob_cli.data_cmd import check_job_datasets

        problems, notes = check_job_datasets(documents, path)
        for line in [*notes, *problems]:
            print(line, file=sys.stderr)
        if problems:
            failed = True
        else:
            noun = "document" if len(documents) == 1 else "documents"
            print(f"{path}: {len(documents)} {noun} valid")
    return EXIT_INVALID if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="sftjob", description="Supervised fine-tuning jobs on Kubernetes and Ray.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = commands.add_parser("crd", help="print the SFTJob CustomResourceDefinition (YAML)")
    crd.set_defaults(handler=_cmd_crd)

    reference = commands.add_parser("reference", help="print the field reference (Markdown)")
    reference.set_defaults(handler=_cmd_reference)

    validate = commands.add_parser("validate", help="check SFTJob files; exit 2 when any is invalid")
    validate.add_argument("files", nargs="+", metavar="FILE", help="SFTJob YAML file(s); '-' reads stdin")
    validate.set_defaults(handler=_cmd_validate)
    from sftjob_cli import data_cmd

    data_cmd.register(commands)
    from sftjob_cli import run_cmd

    run_cmd.register(commands)
    from sftjob_cli import render_cmd

    render_cmd.register(commands)
    from sftjob_cli import eval_cmd

    eval_cmd.register(commands)
    from sftjob_cli import distill_cmd

    distill_cmd.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default: sys.argv[1:]).

    Returns:
        The exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("SFTJOB_DEBUG"):
            raise
        print(f"sftjob: internal error: {type(err).__name__}: {err} (set SFTJOB_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_INTERNAL


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())
