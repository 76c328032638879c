"""`python -m sftjob_operator`: run the operator (settings from the environment, see settings.py).

The process runs standalone (no Kopf peering): deploy exactly one replica.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, read the settings and run Kopf until it is stopped."""
    parser = argparse.ArgumentParser(prog="python -m sftjob_operator", description="The SFTJob operator.")
    parser.add_argument(
        "--liveness", default=None, metavar="URL", help="Kopf's liveness endpoint (default %(default)s)"
    )
    parser.add_argument("--verbose", action="store_true", help="log at INFO with Kopf's details")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG")
    args = parser.parse_args(argv)

    from sftjob_operator.settings import DEFAULT_LIVENESS_ENDPOINT, Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"sftjob-operator: {err}", file=sys.stderr)
        return 2

    import kopf

    from sftjob_operator.handlers import register

    kopf.configure(verbose=args.verbose, debug=args.debug)
    logging.getLogger("sftjob_operator").setLevel(logging.DEBUG if args.debug else logging.INFO)
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=settings.clusterwide,
        namespaces=settings.watch_namespaces,
        liveness_endpoint=args.liveness or DEFAULT_LIVENESS_ENDPOINT,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
