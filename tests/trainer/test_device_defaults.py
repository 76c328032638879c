"""Per-device defaults: the attention implementation and fused kernels, as a pure decision and end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftjob_trainer.device_defaults import (
    FLASH_ATTENTION,
    LIGER,
    NO_KERNELS,
    STOCK_SDPA,
    DeviceDefaults,
    device_defaults,
    installed,
)
from sftjob_trainer.hparams import training_arguments
from sftjob_trainer.model_loading import load_tokenizer

from .conftest import make_job

VARLEN = "sftjob_varlen_sdpa"


def have(*packages: str) -> object:
    """An `available` lookup that answers yes for exactly `packages`."""
    return lambda name: name in packages


@pytest.mark.parametrize(
    ("cuda", "batching", "precision", "packages", "expected"),
    [
        # CPU: neither package runs there, installed or not.
        (False, "packed", "fp32", (), DeviceDefaults(VARLEN, NO_KERNELS)),
        (False, "packed", "bf16", ("flash_attn", "liger_kernel"), DeviceDefaults(VARLEN, NO_KERNELS)),
        (False, "length_grouped", "fp32", ("flash_attn", "liger_kernel"), DeviceDefaults(STOCK_SDPA, NO_KERNELS)),
        # CUDA, packed: flash-attention's varlen kernel when installed and in half precision.
        (True, "packed", "bf16", ("flash_attn",), DeviceDefaults(FLASH_ATTENTION, NO_KERNELS)),
        (True, "packed", "fp16", ("flash_attn", "liger_kernel"), DeviceDefaults(FLASH_ATTENTION, LIGER)),
        (True, "packed", "bf16", ("liger_kernel",), DeviceDefaults(VARLEN, LIGER)),
        (True, "packed", "bf16", (), DeviceDefaults(VARLEN, NO_KERNELS)),
        (True, "packed", "fp32", ("flash_attn",), DeviceDefaults(VARLEN, NO_KERNELS)),
        # CUDA, padded batches: stock SDPA with the padding mask; Liger is independent of batching.
        (True, "length_grouped", "bf16", ("flash_attn", "liger_kernel"), DeviceDefaults(STOCK_SDPA, LIGER)),
        (True, "length_grouped", "bf16", ("flash_attn",), DeviceDefaults(STOCK_SDPA, NO_KERNELS)),
    ],
)
def test_decision_table(cuda: bool, batching: str, precision: str, packages: tuple[str, ...],
                        expected: DeviceDefaults) -> None:
    choices = device_defaults(cuda, batching, precision, have(*packages))  # type: ignore[arg-type]
    assert choices == expected
    assert choices.use_liger_kernel is (expected.kernels == LIGER)


def test_installed_looks_up_import_names() -> None:
    assert installed("torch") is True
    assert installed("sftjob_no_such_package") is False


def test_default_lookup_follows_find_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    fake = {"flash_attn", "liger_kernel"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in fake else real(name, *a))
    assert device_defaults(True, "packed", "bf16") == DeviceDefaults(FLASH_ATTENTION, LIGER)
    assert device_defaults(False, "packed", "fp32") == DeviceDefaults(VARLEN, NO_KERNELS)


def test_plan_records_choices_and_liger_reaches_sftconfig(tiny_model_dir: Path, copy_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """plan_job records the choices in status.resolved; training_arguments turns `liger` into use_liger_kernel."""
    import importlib.util

    from trl import SFTConfig

    from sftjob_trainer.data import prepare_dataset
    from sftjob_trainer.job_context import context_for
    from sftjob_trainer.preparation import plan_job

    job = make_job("t", tiny_model_dir, copy_data, tmp_path, dataset={"packing": True})
    tokenizer = load_tokenizer(tiny_model_dir, job.spec.model)
    prepared = prepare_dataset(job.spec.dataset, tokenizer, seed=1)
    cpu, _ = plan_job(context_for(job, 1), prepared, tokenizer, tiny_model_dir)
    assert (cpu.resolved.attention, cpu.resolved.kernels, cpu.resolved.device) == (VARLEN, NO_KERNELS, "cpu")
    cpu_args = training_arguments(job.spec, cpu, str(tmp_path / "hf"))
    assert cpu_args["use_liger_kernel"] is False
    assert SFTConfig(**cpu_args).use_liger_kernel is False

    # A GPU job planned where both optional packages are installed (the driver runs from the workers' image).
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in ("flash_attn", "liger_kernel") else real(name, *a))
    gpu_job = make_job("t", tiny_model_dir, copy_data, tmp_path, dataset={"packing": True},
                       compute={"gpusPerWorker": 1})
    gpu, batching = plan_job(context_for(gpu_job, 1), prepared, tokenizer, tiny_model_dir)
    assert batching == "packed"
    wire = gpu.resolved.to_wire()
    assert (wire["attention"], wire["kernels"], wire["precision"], wire["device"]) == (
        FLASH_ATTENTION, LIGER, "bf16", "cuda")
    assert training_arguments(gpu_job.spec, gpu, str(tmp_path / "hf"))["use_liger_kernel"] is True
