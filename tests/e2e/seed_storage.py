"""Put a tiny base model and a tiny dataset into object storage for the kind e2e.

Runs inside the trainer image (it has torch, transformers and boto3), as a Kubernetes Job, with
AWS_ENDPOINT_URL and keys pointing at the e2e MinIO. Usage: python seed_storage.py s3://BUCKET
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from sftjob_trainer import object_store
from sftjob_trainer.tiny import build_tiny_model

# 64 prompt/completion rows: enough for a few optimizer steps and a validation split, seconds on a CPU.
ROWS = 64


def dataset_lines(rows: int = ROWS) -> list[str]:
    """Prompt/completion pairs a tiny model can fit: the completion spells out the prompt's number."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return [json.dumps({"prompt": f"say {i % 10}:", "completion": f" {words[i % 10]}"}) for i in range(rows)]


def seed(bucket_uri: str) -> list[str]:
    """Create the bucket's content: `models/tiny/` and `data/train.jsonl`; returns the URIs written."""
    client = object_store.s3_client()
    bucket = object_store.parse_s3(bucket_uri).bucket
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    written = []
    with tempfile.TemporaryDirectory() as workdir:
        model = build_tiny_model(Path(workdir) / "tiny")
        for name in object_store.upload_dir(model, object_store.join(bucket_uri, "models", "tiny")):
            written.append(object_store.join(bucket_uri, "models", "tiny", name))
    train = object_store.join(bucket_uri, "data", "train.jsonl")
    object_store.write_bytes(train, ("\n".join(dataset_lines()) + "\n").encode())
    written.append(train)
    return written


if __name__ == "__main__":
    for uri in seed(sys.argv[1]):
        print(uri)
