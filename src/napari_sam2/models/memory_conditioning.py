"""Memory read-out of SAM 2: pick memories from the bank and fuse them into the current frame.

The memory bank of one object is the ``output_dict`` the video predictor keeps::

    {"cond_frame_outputs": {frame_idx: frame_out, ...},      # prompted frames
     "non_cond_frame_outputs": {frame_idx: frame_out, ...}}  # tracked frames

where each ``frame_out`` is a ``track_step`` output dict (see ``SAM2Base.track_step``); here we
read its ``maskmem_features`` (``B×C_mem×h×w``, any float dtype, any device),
``maskmem_pos_enc`` (list whose last entry is ``B×C_mem×h×w``) and ``obj_ptr`` (``B×C``).

For a frame that is not an initial conditioning frame the memory holds

1. the spatial memories of the (temporally closest, at most ``max_cond_frames_in_attn``)
   conditioning frames, with temporal slot 0;
2. the spatial memories of up to ``num_maskmem - 1`` preceding tracked frames (the previous
   frame, then every ``memory_temporal_stride_for_eval``-th frame), with slots 1 .. num_maskmem-1
   (the most recent frame gets the last slot);
3. optionally, object pointers of conditioning frames (only those not in the future when
   ``only_obj_ptrs_in_the_past_for_eval``) and of up to ``max_obj_ptrs_in_encoder - 1``
   preceding frames, each tagged with a 1D sine encoding of its temporal distance.

"Preceding" means lower frame indices, or higher ones when tracking in reverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .position_encoding import sine_encoding_1d

__all__ = ["select_closest_cond_frames", "MemoryConditioningMixin"]

FrameOutputs = Mapping[int, Mapping[str, Any]]


def select_closest_cond_frames(
    frame_idx: int, cond_frame_outputs: FrameOutputs, max_cond_frame_num: int
) -> tuple[dict[int, Any], dict[int, Any]]:
    """Split conditioning frames into those used for ``frame_idx`` and the rest.

    With ``max_cond_frame_num == -1`` (or when there are few enough) all are selected. Otherwise
    the selection is the closest conditioning frame before ``frame_idx``, the closest at or after
    it, then the remaining ones by temporal distance, up to ``max_cond_frame_num`` (>= 2).

    Returns:
        ``(selected, unselected)`` as ``{frame_idx: frame_out}`` dicts.
    """
    if max_cond_frame_num == -1 or len(cond_frame_outputs) <= max_cond_frame_num:
        return dict(cond_frame_outputs), {}
    if max_cond_frame_num < 2:
        raise ValueError(f"max_cond_frames_in_attn must be -1 or >= 2, got {max_cond_frame_num}.")
    selected: dict[int, Any] = {}
    before = [t for t in cond_frame_outputs if t < frame_idx]
    after = [t for t in cond_frame_outputs if t >= frame_idx]
    if before:
        selected[max(before)] = cond_frame_outputs[max(before)]
    if after:
        selected[min(after)] = cond_frame_outputs[min(after)]
    rest = sorted(
        (t for t in cond_frame_outputs if t not in selected), key=lambda t: abs(t - frame_idx)
    )
    for t in rest[: max_cond_frame_num - len(selected)]:
        selected[t] = cond_frame_outputs[t]
    unselected = {t: v for t, v in cond_frame_outputs.items() if t not in selected}
    return selected, unselected


class MemoryConditioningMixin(nn.Module):
    """``_prepare_memory_conditioned_features`` and its helpers, mixed into ``SAM2Base``."""

    hidden_dim: int
    mem_dim: int
    num_maskmem: int
    max_cond_frames_in_attn: int
    memory_temporal_stride_for_eval: int
    directly_add_no_mem_embed: bool
    use_obj_ptrs_in_encoder: bool
    max_obj_ptrs_in_encoder: int
    add_tpos_enc_to_obj_ptrs: bool
    proj_tpos_enc_in_obj_ptrs: bool
    use_signed_tpos_enc_to_obj_ptrs: bool
    only_obj_ptrs_in_the_past_for_eval: bool
    memory_attention: nn.Module
    maskmem_tpos_enc: nn.Parameter
    no_mem_embed: nn.Parameter
    no_mem_pos_enc: nn.Parameter
    obj_ptr_tpos_proj: nn.Module

    def _select_spatial_memories(
        self,
        frame_idx: int,
        selected_cond: Mapping[int, Any],
        unselected_cond: Mapping[int, Any],
        non_cond_outputs: FrameOutputs,
        track_in_reverse: bool,
    ) -> list[tuple[int, Mapping[str, Any]]]:
        """``(temporal slot, frame_out)`` pairs whose spatial memories ``frame_idx`` attends to.

        Conditioning frames get slot 0; the ``num_maskmem - 1`` slots after it hold the tracked
        frames ``t_rel`` steps back (slot ``num_maskmem - t_rel``), missing frames skipped.
        Unselected conditioning frames can fill these slots like tracked frames.
        """
        stride = 1 if self.training else self.memory_temporal_stride_for_eval
        picked: list[tuple[int, Mapping[str, Any]]] = [(0, out) for out in selected_cond.values()]
        for t_pos in range(1, self.num_maskmem):
            t_rel = self.num_maskmem - t_pos  # frames back from the current one
            if t_rel == 1:  # always the immediately preceding frame
                t = frame_idx + 1 if track_in_reverse else frame_idx - 1
            elif not track_in_reverse:
                # nearest multiple of `stride` at least 2 frames back, then `stride` apart
                t = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
            else:
                t = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
            out = non_cond_outputs.get(t)
            if out is None:
                out = unselected_cond.get(t)
            if out is not None:
                picked.append((t_pos, out))
        return picked

    def _gather_object_pointers(
        self,
        frame_idx: int,
        selected_cond: Mapping[int, Any],
        unselected_cond: Mapping[int, Any],
        non_cond_outputs: FrameOutputs,
        num_frames: int | None,
        track_in_reverse: bool,
        batch_size: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Object-pointer tokens and their position encodings, or ``None`` if there are none.

        Returns:
            ``(tokens, pos)``, both ``N×B×C_mem``. A ``C``-wide pointer is split into
            ``C // C_mem`` consecutive tokens when ``C_mem < C``.
        """
        B, C = batch_size, self.hidden_dim
        max_ptrs = self.max_obj_ptrs_in_encoder
        if num_frames is not None:
            max_ptrs = min(num_frames, max_ptrs)
        if not self.training and self.only_obj_ptrs_in_the_past_for_eval:
            ptr_cond = {
                t: out
                for t, out in selected_cond.items()
                if (t >= frame_idx if track_in_reverse else t <= frame_idx)
            }
        else:
            ptr_cond = dict(selected_cond)
        sign = -1 if track_in_reverse else 1
        # (temporal distance, B×C pointer)
        signed = self.use_signed_tpos_enc_to_obj_ptrs
        entries: list[tuple[int, torch.Tensor]] = [
            ((frame_idx - t) * sign if signed else abs(frame_idx - t), out["obj_ptr"])
            for t, out in ptr_cond.items()
        ]
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            out = non_cond_outputs.get(t, unselected_cond.get(t))
            if out is not None:
                entries.append((t_diff, out["obj_ptr"]))
        if not entries:
            return None

        ptrs = torch.stack([p.to(device) for _, p in entries], dim=0)  # N×B×C
        if self.add_tpos_enc_to_obj_ptrs:
            # Distances normalised by the largest possible one. The reference divides by zero
            # (NaN pointers) for single-frame videos; we divide by 1 there instead.
            t_diff_max = max(max_ptrs - 1, 1)
            tpos_dim = C if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
            dist = torch.tensor([d for d, _ in entries], device=device) / t_diff_max  # N
            pos = sine_encoding_1d(dist, dim=tpos_dim).to(ptrs.dtype)  # N×tpos_dim
            pos = self.obj_ptr_tpos_proj(pos)  # N×C_mem
            pos = pos.unsqueeze(1).expand(-1, B, self.mem_dim)  # N×B×C_mem
        else:
            pos = ptrs.new_zeros(len(entries), B, self.mem_dim)
        if self.mem_dim < C:
            split = C // self.mem_dim
            ptrs = ptrs.reshape(-1, B, split, self.mem_dim)  # N×B×split×C_mem
            ptrs = ptrs.permute(0, 2, 1, 3).flatten(0, 1)  # (N·split)×B×C_mem
            pos = pos.repeat_interleave(split, dim=0)  # (N·split)×B×C_mem
        return ptrs, pos

    def _prepare_memory_conditioned_features(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        output_dict: Mapping[str, FrameOutputs],
        num_frames: int | None,
        track_in_reverse: bool = False,
    ) -> torch.Tensor:
        """Condition the current frame's lowest-resolution features on the memory bank.

        Args:
            frame_idx: index of the current frame.
            is_init_cond_frame: the frame is prompted and has no earlier memory to read.
            current_vision_feats: list whose last entry is the ``hw×B×C`` frame features.
            current_vision_pos_embeds: matching ``hw×B×C`` position encodings.
            feat_sizes: matching ``(h, w)`` sizes.
            output_dict: the memory bank (see module docstring).
            num_frames: number of frames in the video (bounds the pointer search).
            track_in_reverse: tracking runs towards lower frame indices.

        Returns:
            ``B×C×h×w`` memory-conditioned features (computed in the features' dtype; stored
            memories in another dtype, e.g. bfloat16, are cast to it).
        """
        feats = current_vision_feats[-1]  # hw×B×C
        B, C = feats.size(1), self.hidden_dim
        H, W = feat_sizes[-1]
        device = feats.device
        if self.num_maskmem == 0:  # memory disabled (SAM on single images)
            return feats.permute(1, 2, 0).view(B, C, H, W)

        tokens: list[torch.Tensor] = []  # each N_i×B×C_mem
        tokens_pos: list[torch.Tensor] = []
        num_obj_ptr_tokens = 0
        if is_init_cond_frame:
            if self.directly_add_no_mem_embed:
                with_mem = feats + self.no_mem_embed  # hw×B×C
                return with_mem.permute(1, 2, 0).view(B, C, H, W)
        else:
            cond_outputs = output_dict["cond_frame_outputs"]
            if len(cond_outputs) == 0:
                raise ValueError(
                    f"Frame {frame_idx} is tracked from memory, but the memory bank has no "
                    "conditioning (prompted) frame."
                )
            selected, unselected = select_closest_cond_frames(
                frame_idx, cond_outputs, self.max_cond_frames_in_attn
            )
            non_cond = output_dict["non_cond_frame_outputs"]
            for t_pos, prev in self._select_spatial_memories(
                frame_idx, selected, unselected, non_cond, track_in_reverse
            ):
                if prev.get("maskmem_features") is None:
                    continue  # frame stored without memory (run_mem_encoder=False)
                mem = prev["maskmem_features"].to(device, non_blocking=True)
                tokens.append(mem.flatten(2).permute(2, 0, 1))  # B×C_mem×h×w -> hw×B×C_mem
                mem_pos = prev["maskmem_pos_enc"][-1].to(device)
                mem_pos = mem_pos.flatten(2).permute(2, 0, 1)  # hw×B×C_mem
                tokens_pos.append(mem_pos + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1])
            if self.use_obj_ptrs_in_encoder:
                pointers = self._gather_object_pointers(
                    frame_idx, selected, unselected, non_cond, num_frames, track_in_reverse,
                    B, device,
                )
                if pointers is not None:
                    tokens.append(pointers[0])
                    tokens_pos.append(pointers[1])
                    num_obj_ptr_tokens = pointers[0].shape[0]

        if not tokens:
            # A single learned dummy token, so that attention never sees an empty memory.
            tokens = [self.no_mem_embed.expand(1, B, self.mem_dim)]
            tokens_pos = [self.no_mem_pos_enc.expand(1, B, self.mem_dim)]

        # Stored memories may be bfloat16 (the video predictor keeps them so); run attention in
        # the features' dtype. Where the reference's concatenation promotes to float32 anyway,
        # this gives identical numbers; where it does not, the reference fails on a dtype clash.
        dtype = feats.dtype
        memory = torch.cat([t.to(dtype) for t in tokens], dim=0)  # N×B×C_mem
        memory_pos = torch.cat([p.to(dtype) for p in tokens_pos], dim=0)  # N×B×C_mem
        with_mem = self.memory_attention(
            curr=current_vision_feats,
            curr_pos=current_vision_pos_embeds,
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )  # hw×B×C
        return with_mem.permute(1, 2, 0).view(B, C, H, W)
