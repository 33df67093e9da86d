"""Small building blocks shared by several SAM 2 components."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "LayerNorm2d",
    "activation_fn",
    "activation_module",
    "tensor_identity",
    "version_key",
]


def version_key(*tensors: torch.Tensor) -> tuple | None:
    """What identifies the current values of ``tensors`` (storage and in-place version), for
    caches derived from them; ``None`` when that cannot be told (inference tensors, made under
    ``torch.inference_mode``, keep no version), and the caller should not cache."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t.data_ptr(), t._version) for t in tensors)

def tensor_identity(t: torch.Tensor | None) -> tuple:
    """A cache-key part naming a tensor's current values: the tensor itself (kept alive by
    the key, so its memory cannot be reused while the key exists), its address, layout and
    in-place version (inference tensors keep none; ours are never written in place)."""
    if t is None:
        return (None,)
    version = -1 if t.is_inference() else t._version
    return (HeldTensor(t), t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, version)


class HeldTensor:
    """Holds a tensor inside a cache key; equal to another only for the very same tensor
    memory (compared through the key's address and layout fields)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeldTensor)

    def __hash__(self) -> int:
        return 0


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "glu": F.glu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the functional activation called ``name`` (relu, gelu or glu)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}."
        ) from None


def activation_module(name_or_cls: str | type[nn.Module]) -> type[nn.Module]:
    """Resolve an activation given as a class or as a name such as ``"gelu"``."""
    if isinstance(name_or_cls, str):
        table = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
        if name_or_cls.lower() not in table:
            raise ValueError(
                f"Unknown activation {name_or_cls!r}; expected one of {sorted(table)}."
            )
        return table[name_or_cls.lower()]
    return name_or_cls


class MLP(nn.Module):
    """A stack of ``num_layers`` linear layers with an activation between them.

    Maps ``(..., input_dim)`` to ``(..., output_dim)``; the hidden layers have ``hidden_dim``
    features. The parameters live in ``self.layers`` (state-dict keys ``layers.{i}.weight``).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] | str = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.act = activation_module(activation)()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of a ``B×C×H×W`` tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]
