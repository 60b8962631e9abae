"""A KV cache that writes into buffers sized for the whole generation instead of growing.

Hugging Face's `DynamicCache` appends each new key and value with `torch.cat`, which copies the
whole cache of every layer at every decode step: measured on the 2-core CPU with SmolLM2-135M, the
policy and the backbone (batch 8, 32 new tokens), those copies were about a fifth of a latent
rollout. `PreallocatedCache` allocates (B, H, capacity, D) once per layer and writes each step in
place; the layer's `keys` and `values` are views of the filled part, so every reader of a
`DynamicCache` (attention, the search's forks) reads it unchanged. `left_padded_cache` batches
per-row caches of different lengths (search nodes, the atlas's prefixes) in the prompts' layout.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in buffers of `capacity` positions (doubled if outgrown).

    Args:
        capacity: positions to allocate for: the prompt width plus the new tokens.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._allocate(key_states, value_states, self.capacity)

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        batch, heads, _, _ = keys.shape
        self.key_buffer = keys.new_empty(batch, heads, capacity, keys.shape[-1])
        self.value_buffer = values.new_empty(batch, heads, capacity, values.shape[-1])
        self.capacity = capacity

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _grow(self, capacity: int) -> None:
        keys, values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]
        self._allocate(keys, values, capacity)
        self.key_buffer[:, :, : self.length] = keys
        self.value_buffer[:, :, : self.length] = values

    def _expose(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keeps (or repeats) the rows `indices`, buffers included."""
        if self.is_initialized:
            self.key_buffer = self.key_buffer[indices]
            self.value_buffer = self.value_buffer[indices]
            self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            rows = torch.arange(self.key_buffer.shape[0], device=self.key_buffer.device)
            self.batch_select_indices(rows.repeat_interleave(repeats))


class PreallocatedCache(Cache):
    """A cache of `PreallocatedLayer`s, one added per layer the model updates.

    Args:
        capacity: positions each layer allocates for.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(layer_class_to_replicate=partial(PreallocatedLayer, capacity))


def left_padded_cache(rows: list[list[tuple[torch.Tensor, torch.Tensor]]], width: int) -> Cache:
    """One batched cache from per-row caches of different lengths, left-padded to `width`.

    Args:
        rows: per row, per layer (keys, values), each (H, n_row, hd).
        width: the batch's cache length (>= every n_row); the padding columns are zeros and
            must be masked out, as the engine's left-padded prompts are.
    """
    layers = []
    for layer in zip(*rows, strict=True):
        keys, values = (
            torch.stack([F.pad(t, (0, 0, width - t.shape[1], 0)) for t in part])
            for part in zip(*layer, strict=True)
        )
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)
