"""Memory attention: conditions the current frame's features on memories of earlier frames.

A stack of pre-norm transformer layers (self-attention over the current frame's tokens,
cross-attention to the memory tokens, feed-forward MLP) followed by a final layer norm. The
memory tokens are the spatial memories of past frames (``64``-channel, one grid per frame) and,
at the end, the object-pointer tokens; the latter carry no spatial position, so they are left out
of the rotary encoding (``num_obj_ptr_tokens``).

Inputs and outputs of ``MemoryAttention`` are sequence-first (``N×B×C``), as SAM 2 passes them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .attention import RoPEAttention
from .common import activation_fn, tensor_identity

__all__ = ["MemoryAttentionLayer", "MemoryAttention"]


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None, enabled: bool) -> torch.Tensor:
    """``x + pos`` when ``enabled`` and a position encoding is given, else ``x``."""
    return x + pos if enabled and pos is not None else x


class MemoryAttentionLayer(nn.Module):
    """One pre-norm layer: self-attention, cross-attention to memory, feed-forward MLP.

    Tensors are ``B×N×C`` (batch first) when used inside ``MemoryAttention`` with
    ``batch_first=True``. The attention modules are given as instances (``self_attention`` works at
    ``d_model`` width; ``cross_attention`` takes ``d_model`` queries and memory-width keys/values).

    Args:
        activation: name of the MLP activation (``"relu"``, ``"gelu"`` or ``"glu"``).
        cross_attention: attention from the current tokens to the memory tokens.
        d_model: width of the current-frame tokens.
        dim_feedforward: hidden width of the MLP.
        dropout: dropout rate (training only; no-op in eval).
        pos_enc_at_attn: add the query position encoding to self-attention queries and keys.
        pos_enc_at_cross_attn_keys: add the memory position encoding to cross-attention keys.
        pos_enc_at_cross_attn_queries: add the query position encoding to cross-attention queries.
        self_attention: attention among the current tokens.
    """

    def __init__(
        self,
        activation: str,
        cross_attention: nn.Module,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        pos_enc_at_attn: bool,
        pos_enc_at_cross_attn_keys: bool,
        pos_enc_at_cross_attn_queries: bool,
        self_attention: nn.Module,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.dropout_value = dropout
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)

        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

        self.activation_str = activation
        self.activation = activation_fn(activation)

        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys

    def _self_attention_block(
        self, tgt: torch.Tensor, query_pos: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.norm1(tgt)
        qk = _with_pos(x, query_pos, self.pos_enc_at_attn)
        return tgt + self.dropout1(self.self_attn(qk, qk, x))

    def _cross_attention_block(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor | None,
        pos: torch.Tensor | None,
        num_k_exclude_rope: int,
    ) -> torch.Tensor:
        extra: dict[str, int] = {}
        if num_k_exclude_rope > 0:
            if not isinstance(self.cross_attn_image, RoPEAttention):
                raise TypeError("num_k_exclude_rope > 0 needs a RoPEAttention cross-attention.")
            extra["num_k_exclude_rope"] = num_k_exclude_rope
        x = self.norm2(tgt)
        out = self.cross_attn_image(
            _with_pos(x, query_pos, self.pos_enc_at_cross_attn_queries),
            _with_pos(memory, pos, self.pos_enc_at_cross_attn_keys),
            memory,
            **extra,
        )
        return tgt + self.dropout2(out)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        """Update the current tokens.

        Args:
            tgt: ``B×Nq×d_model`` current-frame tokens.
            memory: ``B×Nk×C_mem`` memory tokens (object pointers last).
            pos: ``B×Nk×C_mem`` memory position encoding.
            query_pos: ``B×Nq×d_model`` position encoding of the current tokens.
            num_k_exclude_rope: number of trailing memory tokens without rotary encoding.

        Returns:
            ``B×Nq×d_model`` updated tokens.
        """
        tgt = self._self_attention_block(tgt, query_pos)
        return self.attend_memory(tgt, memory, pos, query_pos, num_k_exclude_rope)

    def self_attention(self, tgt: torch.Tensor, query_pos: torch.Tensor | None) -> torch.Tensor:
        """The first step alone (``B×Nq×d_model`` in and out): it sees only the current frame."""
        return self._self_attention_block(tgt, query_pos)

    def attend_memory(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        """The steps after :meth:`self_attention`: cross-attention to memory, then the MLP."""
        tgt = self._cross_attention_block(tgt, memory, query_pos, pos, num_k_exclude_rope)
        x = self.norm3(tgt)
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return tgt + self.dropout3(x)


def _frame_key(
    curr: torch.Tensor, curr_pos: torch.Tensor | None, layer: nn.Module, owner: nn.Module
) -> tuple | None:
    """Cache key of :meth:`MemoryAttention._frame_self_attention`."""
    weights = [*layer.self_attn.parameters(), *layer.norm1.parameters()]
    autocast = torch.is_autocast_enabled(curr.device.type)
    dtype = torch.get_autocast_dtype(curr.device.type) if autocast else None
    return (
        tensor_identity(curr),
        tensor_identity(curr_pos),
        tuple(tensor_identity(w) for w in weights),
        autocast,
        dtype,
        owner.pos_enc_at_input,
    )


class MemoryAttention(nn.Module):
    """``num_layers`` copies of a ``MemoryAttentionLayer`` plus a final layer norm.

    Args:
        d_model: width of the current-frame tokens.
        pos_enc_at_input: add ``0.1 * curr_pos`` to the current tokens before the first layer.
        layer: layer instance, deep-copied ``num_layers`` times (``layers.{i}.*``).
        num_layers: number of layers.
        batch_first: the layers expect ``B×N×C`` tensors (inputs are transposed for them).
    """

    def __init__(
        self,
        d_model: int,
        pos_enc_at_input: bool,
        layer: nn.Module,
        num_layers: int,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.batch_first = batch_first
        self._frame_cache: tuple[tuple, torch.Tensor] | None = None

    def forward(
        self,
        curr: torch.Tensor | list[torch.Tensor],
        memory: torch.Tensor,
        curr_pos: torch.Tensor | list[torch.Tensor] | None = None,
        memory_pos: torch.Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        """Condition the current frame on the memory.

        Args:
            curr: ``HW×B×d_model`` current-frame tokens (or a one-element list of them).
            memory: ``Nk×B×C_mem`` memory tokens; the last ``num_obj_ptr_tokens`` are pointers.
            curr_pos: ``HW×B×d_model`` position encoding (a one-element list if ``curr`` is).
            memory_pos: ``Nk×B×C_mem`` memory position encoding.
            num_obj_ptr_tokens: number of object-pointer tokens at the end of ``memory``.

        Returns:
            ``HW×B×d_model`` normalized, memory-conditioned tokens (sequence first).
        """
        if isinstance(curr, list):
            if not isinstance(curr_pos, list) or len(curr) != 1 or len(curr_pos) != 1:
                raise ValueError("A list `curr` needs a list `curr_pos`, both of one element.")
            curr, curr_pos = curr[0], curr_pos[0]
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(
                f"Batch size differs between curr ({curr.shape[1]}) and memory ({memory.shape[1]})."
            )

        if not self.batch_first:
            raise NotImplementedError("MemoryAttention runs its layers batch-first only.")
        output = self._frame_self_attention(curr, curr_pos)  # B×N×C
        curr_pos = curr_pos.transpose(0, 1) if curr_pos is not None else None
        memory = memory.transpose(0, 1)  # N×B×C -> B×N×C for the layers
        memory_pos = memory_pos.transpose(0, 1) if memory_pos is not None else None

        for i, layer in enumerate(self.layers):
            extra: dict[str, int] = {}
            if isinstance(layer.cross_attn_image, RoPEAttention):
                extra["num_k_exclude_rope"] = num_obj_ptr_tokens
            step = layer.attend_memory if i == 0 else layer
            output = step(output, memory, pos=memory_pos, query_pos=curr_pos, **extra)
        output = self.norm(output)

        return output.transpose(0, 1)  # B×N×C -> N×B×C

    def _frame_self_attention(
        self, curr: torch.Tensor, curr_pos: torch.Tensor | None
    ) -> torch.Tensor:
        """The input position term and the first layer's self-attention, ``B×N×C``.

        Both see only the current frame, never the memory: every object tracked on a frame
        gets the same result. Without gradients it is computed once per frame and reused
        (for the other objects, in later calls or along a broadcast batch), keyed by the
        frame's feature tensors, the weights and the autocast state.
        """
        first = self.layers[0]
        key = None
        if not torch.is_grad_enabled() and not self.training:
            key = _frame_key(curr, curr_pos, first, self)
            if key is not None and self._frame_cache is not None:
                cached_key, value = self._frame_cache
                if cached_key == key:
                    return value
        batch = curr.shape[1]
        shared = batch > 1 and curr.stride(1) == 0 and (curr_pos is None or curr_pos.stride(1) == 0)
        x, pos = (curr[:, :1], None if curr_pos is None else curr_pos[:, :1]) if shared else (
            curr, curr_pos)
        if self.pos_enc_at_input and pos is not None:
            x = x + 0.1 * pos
        x = x.transpose(0, 1)
        pos = pos.transpose(0, 1) if pos is not None else None
        out = first.self_attention(x, pos)
        if shared:
            out = out.expand(batch, -1, -1)
        if key is not None:
            # The key holds the frame's tensors, so their memory cannot be reused meanwhile.
            self._frame_cache = (key, out)
        return out
