"""Per-device defaults of the training step: the attention implementation and the fused kernels.

A pure decision from (device, batching, precision, installed packages) to the choices that
`status.resolved.attention` and `status.resolved.kernels` record:

| device | batching         | precision  | flash_attn | liger_kernel | attention            | kernels |
|--------|------------------|------------|------------|--------------|----------------------|---------|
| cpu    | packed           | any        | any        | any          | `sftjob_varlen_sdpa` | `none`  |
| cpu    | length_grouped   | any        | any        | any          | `sdpa`               | `none`  |
| cuda   | packed           | bf16, fp16 | yes        |              | `flash_attention_2`  |         |
| cuda   | packed           | fp32       | any        |              | `sftjob_varlen_sdpa` |         |
| cuda   | packed           | any        | no         |              | `sftjob_varlen_sdpa` |         |
| cuda   | length_grouped   | any        | any        |              | `sdpa`               |         |
| cuda   |                  |            |            | yes          |                      | `liger` |
| cuda   |                  |            |            | no           |                      | `none`  |

Why: on CPU the varlen SDPA of `sftjob_trainer.attention` is what bench/RESULTS.md measured fastest
for packed rows, and neither package runs there. On CUDA, flash-attention's varlen kernel reads the
packed row's example boundaries from `position_ids` (transformers' padding-free path) in one launch
per layer, where our varlen SDPA launches one SDPA per example; flash-attention needs half precision.
Liger's Triton RMSNorm, RoPE and SwiGLU kernels cut activation memory and launches; TRL keeps its
fused linear cross-entropy off (it patches the LM head itself), so `liger` changes the layers, not
the loss. Both packages need CUDA to build and run: they are the `gpu` extra, never a CPU install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

FLASH_ATTENTION = "flash_attention_2"
STOCK_SDPA = "sdpa"
LIGER = "liger"
NO_KERNELS = "none"
# Import names of the optional GPU packages (pip names flash-attn and liger-kernel).
FLASH_ATTN_PACKAGE = "flash_attn"
LIGER_PACKAGE = "liger_kernel"
# Precisions flash-attention computes in; fp32 activations raise inside its kernel.
HALF_PRECISIONS = ("bf16", "fp16")


@dataclass(frozen=True)
class DeviceDefaults:
    """The per-device choices of one job."""

    attention: str
    """The transformers attention implementation (`attn_implementation`)."""
    kernels: str
    """`liger` (SFTConfig `use_liger_kernel=True`) or `none`."""

    @property
    def use_liger_kernel(self) -> bool:
        """Whether the Trainer patches the model with Liger's kernels."""
        return self.kernels == LIGER


def installed(package: str) -> bool:
    """Whether `package` (an import name) can be imported here, without importing it."""
    return importlib.util.find_spec(package) is not None


def device_defaults(cuda: bool, batching: str, precision: str,
                    available: Callable[[str], bool] = installed) -> DeviceDefaults:
    """Choose the attention implementation and fused kernels (the table in this module's docstring).

    Args:
        cuda: Whether the workers train on CUDA GPUs.
        batching: `packed` (padding-free rows) or `length_grouped` (padded batches).
        precision: The resolved training precision: `bf16`, `fp16` or `fp32`.
        available: Whether an optional package (import name) is installed on the workers.

    Returns:
        The choices.
    """
    from sftjob_trainer.attention import VARLEN_ATTENTION  # here: that module imports torch, this one must not

    if batching != "packed":
        attention = STOCK_SDPA
    elif cuda and precision in HALF_PRECISIONS and available(FLASH_ATTN_PACKAGE):
        attention = FLASH_ATTENTION
    else:
        attention = VARLEN_ATTENTION
    kernels = LIGER if cuda and available(LIGER_PACKAGE) else NO_KERNELS
    return DeviceDefaults(attention=attention, kernels=kernels)
