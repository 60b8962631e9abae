"""Writing a feature cache (see `feature_cache`): each rank its rows, then rank 0 the manifest.

Under FSDP every backbone pass is collective, so every rank makes the same number of passes (a
rank with fewer rows repeats a batch and drops its states). Files are fsynced before the manifest
is written, and the manifest goes in under a temporary name and `os.replace`, so it only ever
appears, complete, after everything it lists.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cola_lightning.models.backbone import DTYPES

FORMAT = 1
MANIFEST = "manifest.json"
# Same-width integer storage by element size, as numpy and torch spell it.
STORAGE = {2: (np.int16, torch.int16), 4: (np.int32, torch.int32)}
LEFTOVERS = ("*-rows-*.bin", "*-offsets.npy", MANIFEST + ".tmp")


@dataclass
class RankGroup:
    """This process's place among the ranks writing a cache, and how to wait for the others."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None


@dataclass
class CacheJob:
    """What writing a cache needs: the splits' rows and how to turn a batch into states.

    Args:
        splits: each split's rows (items with ``input_ids``), in dataset order.
        lengths: each split's row lengths (from `scan_rows`).
        collate: rows -> a batch (right-padded when rows differ in length).
        compute: a batch -> the backbone's states (B, T, d), on any device.
        hidden_size: d.
        batch_size: rows per `compute` call.
    """

    splits: dict[str, Dataset]
    lengths: dict[str, np.ndarray]
    collate: Callable[[list], dict]
    compute: Callable[[dict], torch.Tensor]
    hidden_size: int
    batch_size: int


def rank_rows(count: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous row range [lo, hi) that rank `rank` of `world` computes."""
    return count * rank // world, count * (rank + 1) // world


def shard_name(split: str, lo: int, hi: int) -> str:
    return f"{split}-rows-{lo:010d}-{hi:010d}.bin"


def leftovers(directory: Path) -> list[Path]:
    """Cache files in `directory` other than the manifest (what a rebuild removes)."""
    return [path for pattern in LEFTOVERS for path in directory.glob(pattern)]


def write_cache(directory: Path, identity: dict, job: CacheJob, group: RankGroup) -> None:
    """Every rank writes its rows of every split; rank 0 then writes the manifest.

    Under FSDP every backbone pass is collective, so every rank makes the same number of passes
    (a rank with fewer rows repeats a batch and drops its states).
    """
    group.barrier()  # nobody still reading the old manifest when rank 0 removes it
    if group.rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST).unlink(missing_ok=True)  # first: the folder is now incomplete
        for path in leftovers(directory):
            path.unlink()
    group.barrier()
    dtype = DTYPES[identity["dtype"]]
    splits = {}
    for name, rows in job.splits.items():
        offsets = np.concatenate([[0], np.cumsum(job.lengths[name])]).astype(np.int64)
        _write_rows(directory, name, rows, offsets, job, group, dtype)
        splits[name] = _split_entry(directory, name, offsets, group)
    group.barrier()
    if group.rank == 0:
        manifest = {
            "format": FORMAT,
            "identity": identity,
            "hidden_size": job.hidden_size,
            "splits": splits,
        }
        _write_atomically(directory / MANIFEST, json.dumps(manifest, indent=1))
    group.barrier()


def _write_rows(
    directory: Path,
    name: str,
    rows: Dataset,
    offsets: np.ndarray,
    job: CacheJob,
    group: RankGroup,
    dtype: torch.dtype,
) -> None:
    count = len(rows)
    lo, hi = rank_rows(count, group.rank, group.world)
    passes = math.ceil(math.ceil(count / group.world) / job.batch_size)
    tokens = int(offsets[hi] - offsets[lo])
    path = directory / shard_name(name, lo, hi)
    if tokens == 0:
        path.write_bytes(b"")
    else:
        storage = STORAGE[dtype.itemsize][0]
        out = np.memmap(path, dtype=storage, mode="w+", shape=(tokens, job.hidden_size))
    for step in range(passes):
        start = lo + step * job.batch_size
        indices = list(range(start, min(start + job.batch_size, hi))) or [min(lo, count - 1)]
        hidden = job.compute(job.collate([rows[i] for i in indices]))
        if start >= hi:
            continue  # a pass only to keep the ranks' collectives in step
        values = hidden.to(dtype).cpu().view(STORAGE[dtype.itemsize][1]).numpy()
        for j, i in enumerate(indices):
            a, b = offsets[i] - offsets[lo], offsets[i + 1] - offsets[lo]
            out[a:b] = values[j, : b - a]
    if tokens:
        out.flush()
        del out
    _fsync(path)


def _split_entry(directory: Path, name: str, offsets: np.ndarray, group: RankGroup) -> dict:
    """The manifest's entry of a split: its non-empty shards (as every rank wrote them)."""
    count = len(offsets) - 1
    offsets_file = f"{name}-offsets.npy"
    if group.rank == 0:
        np.save(directory / offsets_file, offsets)
        _fsync(directory / offsets_file)
    shards = []
    for rank in range(group.world):
        lo, hi = rank_rows(count, rank, group.world)
        if hi > lo:
            tokens = int(offsets[hi] - offsets[lo])
            shards.append({"file": shard_name(name, lo, hi), "rows": [lo, hi], "tokens": tokens})
    return {"rows": count, "offsets": offsets_file, "shards": shards}


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
