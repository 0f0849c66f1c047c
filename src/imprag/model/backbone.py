"""The backbone adapter: the one hand-written loop over a stock Hugging Face decoder's layers.

We never fork a modeling file. Each layer's own modules (input norm, q/k/v/o projections, optional q/k
norms, the family's rotary function, post-attention norm, MLP) are called in the order the stock layer
calls them, but split at the two points ImpRAG needs:

  project(i)  ->  q, k, v of layer i, both before and after RoPE   (E_q / E_p are read here at layer b)
  attend(i)   ->  attention over [passage KV (middle layers only); cached prompt KV; this chunk], o_proj,
                  residual, MLP

so the prompt can stop at layer b, retrieve, and continue the same forward pass. Differences between
families live in the explicit `ARCHITECTURES` registry, never in name sniffing.

Shape legend: B batch, T tokens in this chunk, S keys (passages + cached prompt + chunk), P passage tokens,
H query heads, G KV heads, D head dim, E hidden size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

from imprag.errors import ImpragError

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Backbone",
    "KVCache",
    "Projection",
    "Step",
    "UnsupportedModelError",
]


class UnsupportedModelError(ImpragError, ValueError):
    """The model's architecture is not in the registry."""


# --------------------------------------------------------------------------------------------------
# Registry of supported families


def _no_windows(config: PretrainedConfig) -> list[int | None]:
    return [None] * config.num_hidden_layers


def _uniform_window(config: PretrainedConfig) -> list[int | None]:
    # Mistral: one sliding window (or none) for every layer.
    return [getattr(config, "sliding_window", None)] * config.num_hidden_layers


def _layer_type_windows(config: PretrainedConfig) -> list[int | None]:
    # Qwen2/Qwen3: `layer_types` marks which layers use the sliding window.
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    return [config.sliding_window if kind == "sliding_attention" else None for kind in types]


@dataclass(frozen=True)
class Architecture:
    """What differs between supported decoder families (everything else is shared)."""

    rotary: Callable[..., tuple[Tensor, Tensor]]
    """The family's own `apply_rotary_pos_emb(q, k, cos, sin)`."""
    qk_norm: bool
    """Per-head RMSNorm on q and k before RoPE (Qwen3): applied, and part of the 'pre-RoPE' states."""
    windows: Callable[[PretrainedConfig], list[int | None]]
    """Sliding-attention window per layer (None: full causal attention)."""


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(modeling_llama.apply_rotary_pos_emb, qk_norm=False, windows=_no_windows),
    "mistral": Architecture(modeling_mistral.apply_rotary_pos_emb, qk_norm=False, windows=_uniform_window),
    "qwen2": Architecture(modeling_qwen2.apply_rotary_pos_emb, qk_norm=False, windows=_layer_type_windows),
    "qwen3": Architecture(modeling_qwen3.apply_rotary_pos_emb, qk_norm=True, windows=_layer_type_windows),
}


def architecture_of(config: PretrainedConfig) -> Architecture:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported by imprag; supported families: "
            f"{', '.join(sorted(ARCHITECTURES))} (SmolLM2 is 'llama'). Adding a family means one entry in "
            "imprag.model.backbone.ARCHITECTURES plus a tiny-model test."
        )
    return ARCHITECTURES[model_type]


# --------------------------------------------------------------------------------------------------
# Key/value state carried between chunks


@dataclass
class KVCache:
    """Post-RoPE keys/values per layer for tokens already processed, with their positions and validity.

    Used for the prompt while decoding, and for the retrieved passages (where only layers b..t are kept).
    """

    positions: Tensor  # (B, S) long
    valid: Tensor  # (B, S) bool; False for padding
    keys: dict[int, Tensor] = field(default_factory=dict)  # layer -> (B, G, S, D)
    values: dict[int, Tensor] = field(default_factory=dict)  # layer -> (B, G, S, D)
    keep: frozenset[int] | None = None
    """Layers to store (None: all). Passage caches keep only the middle layers."""

    @classmethod
    def empty(cls, batch: int, device: torch.device, keep: Iterable[int] | None = None) -> KVCache:
        return cls(
            positions=torch.zeros(batch, 0, dtype=torch.long, device=device),
            valid=torch.zeros(batch, 0, dtype=torch.bool, device=device),
            keep=None if keep is None else frozenset(keep),
        )

    @property
    def length(self) -> int:
        return self.positions.shape[1]

    def stores(self, layer: int) -> bool:
        return self.keep is None or layer in self.keep


@dataclass
class Projection:
    """q/k/v of one layer for one chunk; `*_pre` are before RoPE (after q/k norms where a family has them)."""

    q_pre: Tensor  # (B, H, T, D)
    k_pre: Tensor  # (B, G, T, D)
    q: Tensor  # (B, H, T, D), RoPE applied
    k: Tensor  # (B, G, T, D), RoPE applied
    v: Tensor  # (B, G, T, D)


@dataclass
class Step:
    """One forward chunk of tokens: their positions and validity, plus the key/value state they may see.

    `cache` (prompt tokens seen before this chunk) is visible in every layer and receives this chunk's
    keys/values. `passages` is visible only in `reading_layers` (b..t) and is never modified.
    """

    positions: Tensor  # (B, T) long
    valid: Tensor  # (B, T) bool
    cos: Tensor
    sin: Tensor
    windows: list[int | None]
    cache: KVCache | None = None
    passages: KVCache | None = None
    reading_layers: range = range(0)
    _masks: dict[tuple[int | None, bool], Tensor | None] = field(default_factory=dict, repr=False)

    def context(self, layer: int) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        """What this chunk attends to in `layer` besides itself: the prefix keys and values, as parts
        (B, G, S_i, D) in order (passages in reading layers, then the cached prompt; empty if neither), and
        the boolean mask (B, 1, T, sum S_i + T) over prefix and chunk.

        The mask is None when it would be plain causal attention over this chunk alone (no prefix, no
        padding, no window cutting in): SDPA then takes its fused causal kernel, several times faster on
        CPU than the masked path.
        """
        parts_k, parts_v = [], []
        reading = self.passages is not None and layer in self.reading_layers
        if reading:
            parts_k.append(self.passages.keys[layer])
            parts_v.append(self.passages.values[layer])
        if self.cache is not None and self.cache.length:
            parts_k.append(self.cache.keys[layer])
            parts_v.append(self.cache.values[layer])
        return parts_k, parts_v, self._mask(self.windows[layer], reading)

    def record(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Append this chunk's keys/values (B, G, T, D) of `layer` to the cache (if any)."""
        cache = self.cache
        if cache is None or not cache.stores(layer):
            return
        if layer in cache.keys and cache.length:
            cache.keys[layer] = torch.cat([cache.keys[layer], k], dim=2)
            cache.values[layer] = torch.cat([cache.values[layer], v], dim=2)
        else:
            cache.keys[layer], cache.values[layer] = k, v

    def commit(self) -> None:
        """After all layers ran: extend the cache's positions/validity by this chunk."""
        if self.cache is not None:
            self.cache.positions = torch.cat([self.cache.positions, self.positions], dim=1)
            self.cache.valid = torch.cat([self.cache.valid, self.valid], dim=1)

    def _mask(self, window: int | None, reading: bool) -> Tensor | None:
        key = (window, reading)
        if key not in self._masks and self._plain_causal(window, reading):
            self._masks[key] = None
        elif key not in self._masks:
            pos, val = [], []
            if reading:
                pos.append(self.passages.positions)
                val.append(self.passages.valid)
            if self.cache is not None and self.cache.length:
                pos.append(self.cache.positions)
                val.append(self.cache.valid)
            pos.append(self.positions)
            val.append(self.valid)
            self._masks[key] = attention_mask(
                self.positions, self.valid, torch.cat(pos, dim=1), torch.cat(val, dim=1), window
            )
        return self._masks[key]

    def _plain_causal(self, window: int | None, reading: bool) -> bool:
        # Without a prefix and padding, "key position <= query position" is exactly index causality
        # (positions increase along each row). A window only matters if the chunk is longer than it.
        has_prefix = reading or (self.cache is not None and self.cache.length > 0)
        fits_window = window is None or self.positions.shape[1] <= window
        return not has_prefix and fits_window and bool(self.valid.all())


def attention_mask(
    q_pos: Tensor, q_valid: Tensor, k_pos: Tensor, k_valid: Tensor, window: int | None
) -> Tensor:
    """Boolean (B, 1, T, S) mask: a query sees valid keys at positions <= its own (and inside the window).

    Causality is by position, not by index: passages sit at [0, k*l_max) and the prompt after them, so
    "earlier position" is exactly "earlier token" in every layout we build. Padded queries see every key
    (their outputs are never used) so no softmax row is empty.
    """
    allowed = k_valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])  # (B, T, S)
    if window is not None:
        allowed &= k_pos[:, None, :] > q_pos[:, :, None] - window
    allowed |= ~q_valid[:, :, None]
    return allowed[:, None]


# --------------------------------------------------------------------------------------------------
# The backbone


class Backbone:
    """A stock `*ForCausalLM`, viewed as a list of layers we can run piece by piece.

    It owns no parameters and changes no module: the wrapped model's state_dict is the stock checkpoint.
    """

    def __init__(self, hf_model: PreTrainedModel) -> None:
        config = hf_model.config
        self.arch = architecture_of(config)
        self.hf_model = hf_model
        decoder = getattr(hf_model, hf_model.base_model_prefix, None)
        if decoder is None or not hasattr(decoder, "layers"):
            raise UnsupportedModelError(
                f"{type(hf_model).__name__} has no decoder at .{hf_model.base_model_prefix}.layers; "
                "pass a *ForCausalLM model (e.g. from AutoModelForCausalLM)"
            )
        self.decoder = decoder
        self.num_layers: int = config.num_hidden_layers
        self.num_heads: int = config.num_attention_heads
        self.num_kv_heads: int = config.num_key_value_heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.max_positions: int = config.max_position_embeddings
        self.windows = self.arch.windows(config)
        self.gradient_checkpointing = False
        """Recompute layers in backward instead of keeping their activations (`run` checkpoints each layer
        it runs; layer b of a prompt's pass, split around E_q, and layer t's passage projection are not).
        Training memory: per checkpointed layer its input hidden state (and the K/V it outputs) instead of
        every intermediate, for about one extra forward of compute."""

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    def layer(self, i: int) -> nn.Module:
        return self.decoder.layers[i]

    # -- pieces -------------------------------------------------------------------------------------

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.decoder.embed_tokens(input_ids)  # (B, T, E)

    def step(
        self,
        h: Tensor,
        positions: Tensor,
        valid: Tensor,
        cache: KVCache | None = None,
        passages: KVCache | None = None,
        reading_layers: range = range(0),
    ) -> Step:
        cos, sin = self.decoder.rotary_emb(h, positions)
        return Step(positions, valid, cos, sin, self.windows, cache, passages, reading_layers)

    def project(self, i: int, h: Tensor, step: Step) -> Projection:
        attn = self.layer(i).self_attn
        x = self.layer(i).input_layernorm(h)
        b, t = h.shape[:2]
        q = attn.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = attn.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = attn.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.arch.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q_pre, k_pre = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, G, T, D)
        q_rot, k_rot = self.arch.rotary(q_pre, k_pre, step.cos, step.sin)
        return Projection(q_pre=q_pre, k_pre=k_pre, q=q_rot, k=k_rot, v=v)

    def attend(self, i: int, h: Tensor, proj: Projection, step: Step) -> Tensor:
        """Finish layer i for this chunk: attention, o_proj and residual, then the MLP block."""
        prefix_k, prefix_v, mask = step.context(i)
        step.record(i, proj.k, proj.v)
        return self._finish(i, h, proj, prefix_k, prefix_v, mask)

    def _finish(
        self,
        i: int,
        h: Tensor,
        proj: Projection,
        prefix_k: list[Tensor],
        prefix_v: list[Tensor],
        mask: Tensor | None,
    ) -> Tensor:
        layer = self.layer(i)
        attn = layer.self_attn
        keys = torch.cat([*prefix_k, proj.k], dim=2) if prefix_k else proj.k  # one copy of the prefix
        values = torch.cat([*prefix_v, proj.v], dim=2) if prefix_v else proj.v
        out = F.scaled_dot_product_attention(
            proj.q,
            keys,
            values,
            attn_mask=mask,
            is_causal=mask is None and proj.q.shape[2] > 1,
            dropout_p=attn.attention_dropout if self.hf_model.training else 0.0,
            scale=attn.scaling,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(*h.shape[:-1], -1)
        h = h + attn.o_proj(out)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def run(self, h: Tensor, layers: range, step: Step) -> Tensor:
        """Run whole layers `layers` over the chunk (each one checkpointed when `gradient_checkpointing`
        is on and autograd is recording)."""
        for i in layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = self._checkpointed(i, h, step)
            else:
                h = self.attend(i, h, self.project(i, h, step), step)
        return h

    def _checkpointed(self, i: int, h: Tensor, step: Step) -> Tensor:
        """Layer i under activation checkpointing: only its input is kept; backward recomputes the rest.

        The recomputed function must be pure, and `attend` is not: it appends this chunk's K/V to the
        cache, and what it reads from the cache depends on the cache's length at call time. So the prefix
        and the mask are taken now (the closure holds them; `record` replaces cache tensors, never changes
        them in place), the K/V come out as outputs, and they are recorded outside.
        """
        prefix_k, prefix_v, mask = step.context(i)

        def layer(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            proj = self.project(i, h, step)
            return self._finish(i, h, proj, prefix_k, prefix_v, mask), proj.k, proj.v

        h, k, v = checkpoint(layer, h, use_reentrant=False)
        step.record(i, k, v)
        return h

    def logits(self, h: Tensor) -> Tensor:
        return self.hf_model.lm_head(self.decoder.norm(h))  # (B, T, vocab)
