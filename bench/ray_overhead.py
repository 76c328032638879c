"""What Ray costs: `sftjob run` on a local Ray cluster against the same training in one plain process.

    python bench/ray_overhead.py [--scale full|tiny] [--workers 1,2] [--rounds N] [--out DIR] [--isolate]
                                 [--write-results]

Both sides train the same job (the train_throughput assets, sftjob's defaults, batch 8) and are
observed the same way, from outside, by polling the progress.json that the operator reads
(`SFTJOB_PROGRESS_INTERVAL` lowered so every few steps are seen). Time to first step is split by the
progress messages: process start + imports (until progress.json first appears); the driver's work
(plain: data and model; Ray: data and Ray start); Ray's worker start (worker processes, their imports,
torch.distributed); the worker's model load; trainer build and the first step. Both sides prepare
the data cold (a fresh data cache per run). Steady-state throughput is trained tokens per second between
the first progress record at or after 20% of the steps and the last one before export. Ray's own
start is measured separately (`ray.init` in a fresh process). Peak memory is the whole process tree.

`--isolate` (Linux, root) shields both sides from other sessions' load on a shared machine: the bench
moves into a session of its own and raises that session's scheduler autogroup to nice -19, so the
kernel's per-session fair share hands it the CPU first. Both sides run under the same setting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sftjob_trainer.worker import WORKER_BUILDING_TRAINER, WORKER_LOADING_MODEL

HERE = Path(__file__).resolve().parent
# Progress records every 0.2 s: fine enough to time steps of ~1 s without slowing training.
PROGRESS_INTERVAL_S = "0.2"
POLL_S = 0.1
# The process tree's memory is sampled this often: walking a Ray tree of ~15 processes every POLL_S cost the
# observer ~3% of a core, taken from the side with more processes (the peak is held for tens of seconds).
RSS_POLL_S = 1.0
# Steady state starts after this share of the steps (warm-up, first-step allocations).
STEADY_FROM = 0.2
# Marks `observe` records beside phases and messages: the first validation loss and the first saved checkpoint.
EVAL_LOSS_SEEN = "first evalLoss"
CHECKPOINT_SEEN = "first checkpoint"
# The autogroup niceness of --isolate: the highest priority, a weight ~88x a default session's.
ISOLATED_NICENESS = -19

_PLAIN = """
import json, sys
from pathlib import Path
from transformers import TrainerCallback
from sftjob_api.types import parse_sftjob
from sftjob_trainer.in_process import build_local_trainer
from sftjob_trainer.reporting import ProgressWriter
from sftjob_trainer.progress_callback import TokenCounter

job = parse_sftjob(json.loads(Path(sys.argv[1]).read_text()))
work = Path(sys.argv[2])
writer = ProgressWriter(str(work / "output" / job.name), 1)
writer.set_phase("Initializing", "imports done")
writer.flush()
trainer, _, _ = build_local_trainer(job, work)
writer.set_phase("Running", "model loaded")
writer.flush()
counter = TokenCounter()
trainer.model.register_forward_pre_hook(counter, with_kwargs=True)

class Progress(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        writer.update(step=state.global_step, trained_tokens=counter.local, total_steps=state.max_steps)

trainer.add_callback(Progress())
trainer.train()
writer.set_phase("Succeeded", "done")
writer.flush()
"""

def _job(assets: Path, workers: int, threads: int) -> dict[str, Any]:
    return {
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": f"overhead-w{workers}"},
        "spec": {
            "model": {"source": str(assets / "model")},
            "dataset": {"train": {"uri": str(assets / "train.jsonl")}, "schema": "prompt_completion",
                        "maxSeqLength": 1024, "dedup": False},
            "method": {"type": "full"},
            "hyperparameters": {"epochs": 1, "learningRate": 5e-4, "batchSize": 8, "lrScheduler": "linear",
                                "warmupRatio": 0.0, "weightDecay": 0.0, "seed": 0, "logInterval": 10},
            "compute": {"numWorkers": workers, "gpusPerWorker": 0, "cpusPerWorker": threads},
            "checkpointing": {"interval": 100000, "resumeFrom": "none"},
            "evaluation": {"numSamples": 0},
            "output": {"uri": "OUT"},
        },
    }


def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def observe(command: list[str], progress: Path, env: dict[str, str], cwd: Path | None = None) -> dict[str, Any]:
    """Run `command`, polling `progress` (progress.json); returns phase times, step samples and peak RSS.

    `phases` maps every phase, every message and the marks EVAL_LOSS_SEEN, CHECKPOINT_SEEN and `first_step`
    to the seconds after the start at which a poll first saw it.
    """
    # stderr goes to a file: a pipe read only at the end would stall a chatty run (progress bars, Ray's logs)
    # once its buffer filled.
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True, cwd=cwd)
        phases: dict[str, float] = {}
        samples: list[tuple[float, int, int]] = []
        peak = 0.0
        sampled = -RSS_POLL_S
        while proc.poll() is None:
            now = time.perf_counter() - start
            if now - sampled >= RSS_POLL_S:
                peak, sampled = max(peak, _tree_rss_mb(proc.pid)), now
            try:
                record = json.loads(progress.read_text())
            except (OSError, ValueError):
                record = None
            if record:
                phases.setdefault(record["phase"], now)
                if record.get("message"):
                    phases.setdefault(record["message"], now)
                if (record.get("metrics") or {}).get("evalLoss") is not None:
                    phases.setdefault(EVAL_LOSS_SEEN, now)
                if record.get("checkpoints"):
                    phases.setdefault(CHECKPOINT_SEEN, now)
                stepped = record["phase"] == "Running" and record.get("step", 0) > 0
                if stepped and (not samples or samples[-1][1] != record["step"]):
                    samples.append((now, record["step"], record.get("trainedTokens", 0)))
                    phases.setdefault("first_step", now)
            time.sleep(POLL_S)
        errors.seek(0)
        stderr = errors.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed: {stderr[-3000:]}")
    return {"phases": phases, "samples": samples, "peak_rss_mb": peak, "total_s": time.perf_counter() - start}


def steady_rate(samples: list[tuple[float, int, int]]) -> float:
    """Trained tokens/s between the sample at STEADY_FROM of the steps and the last sample."""
    if len(samples) < 2:
        return float("nan")  # a run too short to see two steps (the tiny smoke scale)
    last_step = samples[-1][1]
    first = next(s for s in samples if s[1] >= STEADY_FROM * last_step)
    if first is samples[-1]:
        first = samples[-2]
    last = samples[-1]
    return (last[2] - first[2]) / (last[0] - first[0])


def ray_start_seconds() -> float:
    """Seconds `ray.init()` takes in a fresh process (imports excluded)."""
    code = ("import time, ray; t=time.perf_counter(); ray.init(include_dashboard=False, configure_logging=False, "
            "log_to_driver=False); print(time.perf_counter()-t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def paired_ratio(runs: list[dict[str, Any]], plain_runs: list[dict[str, Any]], key: str = "steady_tok_s") -> float:
    """The median over rounds of a configuration's `key` (tokens/s) over the plain run of the same round.

    Rounds alternate the configurations, so each ratio compares runs minutes apart; the median is not
    moved by one run that a shared machine sped up or slowed down, as a best-of-rounds ratio is.
    """
    ratios = [r[key] / p[key] for r, p in zip(runs, plain_runs, strict=True)
              if not math.isnan(r[key]) and not math.isnan(p[key])]
    return statistics.median(ratios) if ratios else float("nan")


def _every_round(config_runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{run['steady_tok_s']:.0f}" for run in config_runs)


def _seconds(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"


def isolate() -> str:
    """Move into a new session and raise its autogroup priority; returns what was done, for the table."""
    with contextlib.suppress(OSError):  # already a session leader: its autogroup is its own
        os.setsid()
    try:
        Path("/proc/self/autogroup").write_text(str(ISOLATED_NICENESS))
    except OSError as err:
        return f"not isolated ({err.strerror})"
    return f"isolated from other sessions (own autogroup at nice {ISOLATED_NICENESS})"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print (optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--out", type=Path, default=HERE / ".work")
    parser.add_argument("--isolate", action="store_true", help="see the module docstring")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; each row is its best round")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    isolation = isolate() if args.isolate else "not isolated"
    sys.path.insert(0, str(HERE.parent))  # run as a script: make `bench` importable
    from bench import assets as asset_builder

    assets = args.out / f"assets-{args.scale}"
    if not (assets / "eval.jsonl").exists():
        asset_builder.build(assets, args.scale)
    threads = os.cpu_count() or 1
    env = {**os.environ, "SFTJOB_PROGRESS_INTERVAL": PROGRESS_INTERVAL_S, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    sftjob = str(Path(sys.executable).with_name("sftjob"))
    configs = [("plain", 1)] + [("ray", int(w)) for w in args.workers.split(",")]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {config: [] for config in configs}
    # Rounds alternate the configurations (plain, ray w1, ray w2, plain, ...), so a change in the machine's
    # load hits every configuration alike; each configuration's table row is its best round.
    for round_index in range(args.rounds):
        for mode, workers in configs:
            work = args.out / f"overhead-{mode}-w{workers}"
            shutil.rmtree(work, ignore_errors=True)  # never resume from, or count, an earlier run
            job = _job(assets, workers, max(1, threads // workers))
            job["spec"]["output"]["uri"] = str(work / "output")
            work.mkdir(parents=True, exist_ok=True)
            job_path = work / "job.json"
            job_path.write_text(json.dumps(job))
            progress = work / "output" / job["metadata"]["name"] / "progress.json"
            progress.unlink(missing_ok=True)
            run_env = {**env, "SFTJOB_DATA_CACHE": str(work / "data-cache")}
            if mode == "plain":
                command = [sys.executable, "-c", _PLAIN, str(job_path), str(work)]
            else:
                yaml_path = work / "job.yaml"
                yaml_path.write_text(json.dumps(job))  # JSON is YAML
                command = [sftjob, "run", str(yaml_path), "--no-progress"]
            seen = observe(command, progress, run_env)
            phases = seen["phases"]
            # The first progress.json of either side is written right after its imports.
            first_seen = min(phases.values())
            running = phases.get("Running", first_seen)
            first_step = phases.get("first_step", float("nan"))
            loading = phases.get(WORKER_LOADING_MODEL, float("nan"))
            building = phases.get(WORKER_BUILDING_TRAINER, float("nan"))
            runs[(mode, workers)].append({
                "mode": mode, "workers": workers, "round": round_index + 1,
                "imports_s": first_seen,
                "driver_s": running - first_seen,
                "workers_start_s": loading - running if mode == "ray" else float("nan"),
                "model_s": building - loading if mode == "ray" else float("nan"),
                "trainer_s": first_step - (building if mode == "ray" else running),
                "first_step_s": first_step,
                "steady_tok_s": steady_rate(seen["samples"]),
                "peak_rss_mb": seen["peak_rss_mb"], "total_s": seen["total_s"],
            })
            print(json.dumps(runs[(mode, workers)][-1]), flush=True)
    rows = [max(runs[config], key=lambda r: _or_zero(r["steady_tok_s"])) for config in configs]
    ray_init = ray_start_seconds()
    plain = rows[0]
    lines = [
        "| run | workers | start + imports s | driver: data, model (plain) or data, Ray start (ray) s "
        "| Ray workers start s | worker model load s | trainer build + first step s | time to first step s "
        "| steady trained tok/s (best round) | vs plain: best ÷ best | vs plain: median of rounds "
        "| every round tok/s | peak RSS MB (tree) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['workers']} | {r['imports_s']:.1f} | {r['driver_s']:.1f} | "
            f"{_seconds(r['workers_start_s'])} | {_seconds(r['model_s'])} | {_seconds(r['trainer_s'])} | "
            f"{r['first_step_s']:.1f} | {r['steady_tok_s']:.0f} | {r['steady_tok_s'] / plain['steady_tok_s']:.2f}x | "
            f"{paired_ratio(runs[(r['mode'], r['workers'])], runs[configs[0]]):.2f}x | "
            f"{_every_round(runs[(r['mode'], r['workers'])])} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    lines.append(f"\n`ray.init()` alone in a fresh process: {ray_init:.1f} s.")
    print("\n".join(lines))
    if args.write_results:
        path = HERE / "RESULTS.md"
        text = path.read_text() if path.exists() else ""
        marker = "\n## Ray overhead"
        head, _, rest = text.partition(marker)
        tail = rest[rest.index("\n## "):] if "\n## " in rest else ""  # other benches' sections after this one
        section = (f"{marker} (written by bench/ray_overhead.py)\n\nScale {args.scale}, {threads} CPU threads in "
                   f"all, split evenly over the workers; measured from outside through progress.json; "
                   f"{args.rounds} alternating round(s), each row its best; \"median of rounds\" is the median of each "
                   f"round's ratio to that round's plain run; {isolation}.\n\n" + "\n".join(lines)
                   + "\n")
        path.write_text(head.rstrip() + "\n" + section + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
