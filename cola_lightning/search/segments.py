"""A node's KV caches as a chain of segments, one per edge from the root of a search tree.

Each segment holds only the key/value rows its own edge computed (backbone, policy, Q-model and, in
the inject form, world-model caches). A child's chain is its parent's chain plus one segment; a
batch of nodes is continued from one left-padded cache built from their chains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.kv_cache import left_padded_cache

if TYPE_CHECKING:
    from cola_lightning.search.state import NodeState

CACHES = ("backbone", "policy", "q", "world_model")
# The world model's cache (inject form) lags the others by one position: a position enters it with
# its code, and the last token's code is chosen only when the next token is.
LAG = {"world_model": 1}


@dataclass
class Segment:
    """The cache rows one edge added: cache name -> per layer (keys, values), each (H, n, hd).

    `length` counts the backbone's rows; the world model's root segment has one row fewer (`LAG`).
    """

    kv: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]
    length: int


def row_kv(cache: DynamicCache, row: int, start: int, stop: int | None) -> list[tuple]:
    """Row `row`'s columns [start, stop) of every layer, copied out: (keys, values) (H, n, hd)."""
    return [
        (layer.keys[row, :, start:stop].clone(), layer.values[row, :, start:stop].clone())
        for layer in cache.layers
    ]


def empty_kv(model: CoLAModel, like: torch.Tensor) -> list[tuple]:
    """Zero-length (keys, values) for each world-model layer: the cache of a one-token prompt."""
    config = model.world_model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    empty = like.new_zeros(config.num_key_value_heads, 0, head_dim)
    return [(empty, empty)] * config.num_hidden_layers


def chain_kv(node: NodeState, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The node's whole `name` cache, per layer (keys, values): its segments concatenated."""
    per_layer = zip(*(segment.kv[name] for segment in node.chain), strict=True)
    return [
        tuple(torch.cat(parts, dim=1) for parts in zip(*layer, strict=True)) for layer in per_layer
    ]


def batched_cache(nodes: list[NodeState], name: str, width: int) -> DynamicCache | None:
    """One left-padded cache from each node's chain of segments (None if nodes have none)."""
    if name not in nodes[0].chain[0].kv:
        return None
    return left_padded_cache([chain_kv(node, name) for node in nodes], width)
