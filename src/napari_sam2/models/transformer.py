"""Two-way transformer of the SAM mask decoder.

Prompt/output tokens and image tokens update each other: in every block the tokens attend to
themselves and to the image, then the image attends back to the tokens. A final token-to-image
attention closes the stack.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, RoPEAttention
from .common import MLP

__all__ = ["TwoWayTransformer", "TwoWayAttentionBlock", "Attention", "RoPEAttention"]


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` followed by a last token-to-image attention.

    Args:
        depth: number of two-way blocks.
        embedding_dim: channels of tokens and image embedding.
        num_heads: attention heads (must divide ``embedding_dim // attention_downsample_rate``).
        mlp_dim: hidden width of the token MLPs.
        activation: activation class (or name) of the token MLPs.
        attention_downsample_rate: channel reduction inside the token/image cross attentions.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] | str = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def image_projections(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """What the first block computes from the image alone, for :meth:`forward`'s
        ``image_side``: its token-to-image keys and values and its image-to-token queries
        (``B×heads×HW×c`` each). They do not depend on the prompts, so a decoder that sees
        the same image again (another click) can reuse them."""
        keys = image_embedding.flatten(2).transpose(1, 2)  # B×HW×C
        keys_pe = keys + image_pe.flatten(2).transpose(1, 2)
        first = self.layers[0]
        return {
            "t2i_k": first.cross_attn_token_to_image.project_keys(keys_pe),
            "t2i_v": first.cross_attn_token_to_image.project_values(keys),
            "i2t_q": first.cross_attn_image_to_token.project_queries(keys_pe),
        }

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        image_side: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way attention.

        Args:
            image_embedding: ``B×C×H×W`` image features.
            image_pe: positional encoding of the image, ``B×C×H×W`` (batch 1 broadcasts).
            point_embedding: ``B×N×C`` query tokens; also used as their positional encoding.
            image_side: :meth:`image_projections` of this very image and encoding, if known.

        Returns:
            ``(queries, keys)``: updated tokens ``B×N×C`` and image tokens ``B×HW×C``.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)  # B×C×H×W -> B×HW×C
        key_pe = image_pe.flatten(2).transpose(1, 2)  # B×HW×C
        queries = point_embedding

        for i, layer in enumerate(self.layers):
            queries, keys = layer(
                queries=queries,
                keys=keys,
                query_pe=point_embedding,
                key_pe=key_pe,
                image_side=image_side if i == 0 else None,
            )

        attn = self.final_attn_token_to_image(
            q=queries + point_embedding, k=keys + key_pe, v=keys
        )
        queries = self.norm_final_attn(queries + attn)
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """One block: token self-attention, token→image attention, token MLP, image→token attention.

    Each sub-layer is residual and followed by a layer norm (``norm1`` … ``norm4``). With
    ``skip_first_layer_pe`` the self-attention sees the tokens without positional encoding and
    its output replaces the tokens (no residual), as in the first block of SAM.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] | str = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)

        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)

        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)

        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        image_side: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``B×N×C`` tokens and ``B×HW×C`` image tokens; returns both, same shapes.

        ``image_side`` (first block only): the projections of ``keys`` and ``keys + key_pe``
        from :meth:`TwoWayTransformer.image_projections`, used instead of recomputing them.
        """
        side = image_side or {}
        # Token self-attention.
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        # Tokens attend to the image.
        q = queries + query_pe
        k = None if side else keys + key_pe
        t2i = {"k": side["t2i_k"], "v": side["t2i_v"]} if side else None
        queries = self.norm2(
            queries + self.cross_attn_token_to_image(q=q, k=k, v=keys, projected=t2i)
        )

        # Token MLP.
        queries = self.norm3(queries + self.mlp(queries))

        # Image attends to the tokens.
        q = queries + query_pe
        k = None if side else keys + key_pe
        i2t = {"q": side["i2t_q"]} if side else None
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries, projected=i2t))
        return queries, keys
