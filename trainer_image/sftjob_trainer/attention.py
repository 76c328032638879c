"""Padding-free attention for packed sequences whose cost is bounded per example.

A packed row holds several examples back to back, with `position_ids` restarting at 0 for each.
Transformers' SDPA path turns that into a dense block-diagonal mask over the whole row, so it
computes T² attention scores (and SDPA cannot use its causal fast path with a mask) although
only ΣLᵢ² are useful: measured 3.2x the useful attention work on long-tailed data (bench/RESULTS.md
measures varlen against the stock masked SDPA). `varlen_sdpa` instead runs causal SDPA on each
example's slice — what flash-attention's varlen kernel does on GPU, without needing it.

Registered as the attention implementation `"sftjob_varlen_sdpa"`:
`AutoModelForCausalLM.from_pretrained(..., attn_implementation=VARLEN_ATTENTION)` after
`register_varlen_attention()`. Without packing (a 2D padding mask, or generation with a cache)
it defers to the stock SDPA path, so the same model also generates and evaluates normally.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch.nn import functional

VARLEN_ATTENTION = "sftjob_varlen_sdpa"


def segment_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the examples packed in one row, from positions that restart at 0.

    Args:
        position_ids: Shape [T] (one packed row).

    Returns:
        The example lengths, in order; they sum to T.
    """
    starts = torch.nonzero(position_ids == 0, as_tuple=True)[0].tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    bounds = [*starts, int(position_ids.shape[0])]
    return [b - a for a, b in itertools.pairwise(bounds) if b > a]


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return states
    return states.repeat_interleave(groups, dim=1)


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention with the transformers attention-interface signature.

    Args:
        module: The attention module (for `num_key_value_groups`).
        query: [B, H, T, D].
        key: [B, H_kv, S, D].
        value: [B, H_kv, S, D].
        attention_mask: A 4D mask when the batch is padded; None for packed or unpadded rows.
        dropout: Attention dropout probability.
        scaling: Softmax scale (default 1/sqrt(D)).
        **kwargs: Forwarded by the model; `position_ids` marks the examples of a packed row.

    Returns:
        The attention output as [B, T, H, D] and no weights, as the stock SDPA path returns.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    batch, _, q_len, _ = query.shape
    if attention_mask is not None or position_ids is None or q_len != key.shape[2] or q_len == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    rows = []
    for b in range(batch):
        lengths = segment_lengths(position_ids[min(b, position_ids.shape[0] - 1)])
        # One split per tensor (not a slice per example): the backward then concatenates the
        # example gradients once instead of scattering each into a zero-filled full-size tensor.
        pieces = [
            functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=q.shape[2] > 1)
            for q, k, v in zip(
                query[b : b + 1].split(lengths, dim=2),
                key[b : b + 1].split(lengths, dim=2),
                value[b : b + 1].split(lengths, dim=2),
                strict=True,
            )
        ]
        rows.append(torch.cat(pieces, dim=2))
    output = torch.cat(rows, dim=0)
    return output.transpose(1, 2).contiguous(), None


def _padding_only_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """Build a mask only for padded batches; packed rows are separated by `varlen_sdpa_forward` itself."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def register_varlen_attention() -> str:
    """Register `VARLEN_ATTENTION` with transformers (idempotent).

    Returns:
        The name to pass as `attn_implementation`.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, _padding_only_mask)
    return VARLEN_ATTENTION
