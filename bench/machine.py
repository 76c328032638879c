"""The machine a bench runs on: its name, the library versions, and its peak FLOP/s (the MFU denominator).

Shared by every bench script, so each table names its machine the same way.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

# H100 SXM dense bf16 peak from NVIDIA's datasheet, FLOP/s.
H100_BF16_PEAK = 989e12


# Square matmuls of the CPU peak: (size, repetitions); large enough to reach the BLAS kernel's plateau.
PEAK_SHAPES = ((2048, 5), (4096, 2))


def matmul_peak(shapes: tuple[tuple[int, int], ...] = PEAK_SHAPES) -> float:
    """Best dense fp32 matmul throughput of this CPU in FLOP/s over `shapes` ((size, repetitions) pairs)."""
    import torch

    torch.manual_seed(0)
    best = 0.0
    for n, reps in shapes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def versions() -> str:
    """The versions of the libraries a figure depends on."""
    import torch
    import transformers
    import trl

    return f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"


def device_name() -> str:
    """The GPU's name, or the CPU's model and torch's thread count."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else ""
    return f"{model or platform.machine()} CPU, {torch.get_num_threads()} threads"
