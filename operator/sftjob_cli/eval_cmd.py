"""`sftjob eval OUTPUT [--against BASE]` and `sftjob chat OUTPUT`: evaluate or talk to a fine-tuned output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Longest answer of one chat turn, in tokens.
CHAT_MAX_NEW_TOKENS = 512


def register(commands: Any) -> None:
    """Add the `eval` and `chat` subcommands."""
    evaluate = commands.add_parser(
        "eval", help="evaluate a finished output again: task metrics, lm-eval tasks and the judge of its spec")
    evaluate.add_argument("output", metavar="OUTPUT", help="the job's output directory or s3:// prefix")
    evaluate.add_argument("--against", metavar="BASE",
                          help="compare with this base model, not the one trained from (path, s3://, hf://, .gguf)")
    evaluate.add_argument("--report", metavar="FILE", type=Path,
                          help="write eval_report.md here (default: into the output, replacing the old one)")
    evaluate.set_defaults(handler=_cmd_eval)
    chat = commands.add_parser("chat", help="chat with a fine-tuned output in the terminal (empty line or Ctrl-D ends)")
    chat.add_argument("output", metavar="OUTPUT", help="the job's output directory or s3:// prefix")
    chat.add_argument("--system", metavar="TEXT", help="a system message opening the conversation")
    chat.add_argument("--max-new-tokens", type=int, default=CHAT_MAX_NEW_TOKENS, help="longest answer in tokens")
    chat.set_defaults(handler=_cmd_chat)


def _cmd_eval(args: argparse.Namespace) -> int:
    from sftjob_cli.common import EXIT_INVALID
    from sftjob_trainer.reevaluate import reevaluate
    from sftjob_trainer.trainer_error import TrainerError

    try:
        status, report = reevaluate(args.output, args.against, args.report)
    except TrainerError as err:
        print(f"sftjob eval: {err.code}: {err.message}", file=sys.stderr)
        return EXIT_INVALID
    for metric in status.metrics:
        print(f"{metric.name}: base {metric.base:.4g} -> fine-tuned {metric.tuned:.4g} ({metric.samples} prompts)")
    for task in status.tasks:
        print(f"lm-eval {task.task} {task.metric}: base {task.base} -> fine-tuned {task.tuned}")
    if status.judge is not None:
        judge = status.judge
        print(f"judge {judge.model}: unavailable: {judge.error}" if judge.error else
              f"judge {judge.model}: fine-tuned win rate {judge.win_rate} "
              f"(95% interval {judge.ci_low}-{judge.ci_high}, {judge.prompts} prompts)")
    print(f"evaluation: {status.seconds:.1f} s; report: {report}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    import tempfile

    from transformers import TextStreamer

    from sftjob_cli.common import EXIT_INVALID
    from sftjob_trainer.reevaluate import chat_reply, fetch, load_tuned
    from sftjob_trainer.trainer_error import TrainerError

    with tempfile.TemporaryDirectory(prefix="sftjob-chat-") as tmp:
        try:
            trained = fetch(args.output, Path(tmp))
        except TrainerError as err:
            print(f"sftjob chat: {err.code}: {err.message}", file=sys.stderr)
            return EXIT_INVALID
        model, tokenizer = load_tuned(trained)
        history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        print(f"{trained.name}: the fine-tuned model, as a server loads it. An empty line or Ctrl-D ends.")
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if not line:
                break
            history.append({"role": "user", "content": line})
            print("model> ", end="", flush=True)
            answer = chat_reply(model, tokenizer, history, args.max_new_tokens, streamer)
            history.append({"role": "assistant", "content": answer})
    return 0
