"""Check a finished SFTJob's artifacts in object storage against its manifest.json.

Runs inside the trainer image as a Kubernetes Job after the e2e SFTJob succeeded.
Usage: python check_artifacts.py s3://BUCKET/out/NAMESPACE/NAME  (exit 0: the output is complete and intact)
"""

from __future__ import annotations

import hashlib
import json
import sys

from sftjob_trainer import object_store

# What a LoRA job's manifest must vouch for: the PEFT adapter.
REQUIRED = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")
# Rewritten in place while a job runs (and by the operator's reads racing the last write): checked by content.
LIVE = {"progress.json"}


def check(job_uri: str) -> list[str]:
    """Problems with the output at `job_uri`; empty when manifest.json vouches for every file."""
    manifest_uri = object_store.join(job_uri, "manifest.json")
    if not object_store.exists(manifest_uri):
        return [f"{manifest_uri} is missing: the trainer did not finish its output"]
    manifest = json.loads(object_store.read_bytes(manifest_uri))
    files = manifest.get("files", {})
    problems = [f"{name} is not in manifest.json" for name in REQUIRED if name not in files]
    for name, entry in sorted(files.items()):
        if name in LIVE:
            continue
        data = object_store.read_bytes(object_store.join(job_uri, name))
        if (hashlib.sha256(data).hexdigest(), len(data)) != (entry["sha256"], entry["size"]):
            problems.append(f"{name}: content differs from manifest.json")
    progress = json.loads(object_store.read_bytes(object_store.join(job_uri, "progress.json")))
    if progress.get("phase") != "Succeeded":
        problems.append(f"progress.json phase is {progress.get('phase')!r}, not 'Succeeded'")
    return problems


if __name__ == "__main__":
    found = check(sys.argv[1])
    for problem in found:
        print(problem, file=sys.stderr)
    print(f"{sys.argv[1]}: {'FAILED' if found else 'ok'} ({len(found)} problems)")
    sys.exit(1 if found else 0)
