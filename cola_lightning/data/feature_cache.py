"""A corpus's frozen-backbone states, computed once and read back memory-mapped (stages 1, 1b).

A cache folder holds, per split, one raw ``(tokens, d)`` array per row range (the rows one rank
computed), an ``int64`` offsets file (row i is ``offsets[i]:offsets[i + 1]``), and one
``manifest.json`` naming what the states depend on: the backbone, the tokenizer, the sequence
length, the corpus and the cache dtype. The manifest is written last and atomically (a temporary
name, then `os.replace`), and removed first when a cache is rebuilt, so a folder written by a run
killed mid-way has none and is never read as complete. A manifest that does not match the run is
refused with the differences named.

Storage is `numpy.memmap` over raw files rather than safetensors or `torch.save`: a rank streams
its rows into a file it never holds in memory, and readers (any number of DataLoader workers, each
opening the files lazily) page in only the rows a batch needs. bf16 has no numpy dtype, so values
are stored as same-width integers and viewed back as bf16, fp16 or fp32 by torch.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cola_lightning.data.feature_cache_files import (
    FORMAT,
    MANIFEST,
    STORAGE,
    CacheJob,
    RankGroup,
    leftovers,
    write_cache,
)
from cola_lightning.models.backbone import DTYPES

# What the states depend on, as the manifest names it, and how a difference is spelled out.
IDENTITY = {
    "backbone": "backbone",
    "tokenizer": "tokenizer",
    "seq_len": "sequence length",
    "corpus": "corpus",
    "dtype": "cache dtype",
}


@dataclass
class FeatureCacheConfig:
    """Where and how a stage caches its frozen backbone's states (off unless given).

    Args:
        dir: the cache folder, visible to every rank (each writes its own rows, reads any).
        dtype: ``bfloat16``, ``float16`` or ``float32`` (float32 reproduces the uncached run).
        rebuild: recompute the cache even when the folder holds a matching or a foreign one.
        batch_size: rows per backbone pass while writing; None uses the data module's.
    """

    dir: str
    dtype: str = "bfloat16"
    rebuild: bool = False
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"Unknown feature_cache.dtype {self.dtype!r}; use one of {sorted(DTYPES)}."
            )


class FeatureCacheMismatch(ValueError):
    """The folder holds a cache of other states than this run's, or a damaged one."""


def scan_rows(rows: Dataset) -> tuple[str, np.ndarray]:
    """The corpus fingerprint (sha256 of every row's token ids) and the rows' lengths."""
    digest, lengths = hashlib.sha256(), []
    for index in range(len(rows)):
        ids = np.asarray(rows[index]["input_ids"], dtype=np.int64)
        digest.update(np.int64(len(ids)).tobytes() + ids.tobytes())
        lengths.append(len(ids))
    return digest.hexdigest(), np.asarray(lengths, dtype=np.int64)


def _describe(field: str, value) -> str:
    if value is None:
        return "nothing recorded"
    if field == "corpus":
        return ", ".join(f"{k} {v['rows']} rows ({v['sha'][:12]})" for k, v in value.items())
    if isinstance(value, dict):
        return f"{value['name']} ({value['fingerprint'][:12]})"
    return str(value)


def _comparable(field: str, value):
    if field == "corpus":
        return {name: entry["sha"] for name, entry in value.items()}
    return value["fingerprint"] if isinstance(value, dict) else value


def differences(found: dict, expected: dict) -> list[str]:
    """The identity entries in which a cache's manifest and this run differ, spelled out."""
    return [
        f"{label}: the cache has {_describe(field, found.get(field))}, this run has "
        f"{_describe(field, expected[field])}"
        for field, label in IDENTITY.items()
        if found.get(field) is None
        or _comparable(field, found[field]) != _comparable(field, expected[field])
    ]


class CachedStates:
    """One split's cached states: item i is row i's (length_i, d) tensor."""

    def __init__(self, directory: Path, entry: dict, hidden_size: int, dtype: str) -> None:
        self.directory, self.entry = directory, entry
        self.hidden_size, self.dtype = hidden_size, DTYPES[dtype]
        self.storage = STORAGE[self.dtype.itemsize][0]
        self.starts = [shard["rows"][0] for shard in entry["shards"]]
        self._maps: dict[int, np.memmap] = {}
        self._offsets: np.ndarray | None = None

    def __getstate__(self) -> dict:
        # DataLoader workers get the paths, not mapped pages: each maps the files itself.
        return {**self.__dict__, "_maps": {}, "_offsets": None}

    def __len__(self) -> int:
        return self.entry["rows"]

    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = np.load(self.directory / self.entry["offsets"], mmap_mode="r")
        return self._offsets

    def _map(self, k: int) -> np.memmap:
        if k not in self._maps:
            shard = self.entry["shards"][k]
            shape = (shard["tokens"], self.hidden_size)
            path = self.directory / shard["file"]
            self._maps[k] = np.memmap(path, dtype=self.storage, mode="r", shape=shape)
        return self._maps[k]

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} is outside the cache's {len(self)} rows")
        k = bisect.bisect_right(self.starts, index) - 1
        offsets = self.offsets()
        base = offsets[self.starts[k]]
        values = np.array(self._map(k)[offsets[index] - base : offsets[index + 1] - base])
        return torch.from_numpy(values).view(self.dtype)


class WithStates(Dataset):
    """A split's rows, each with its cached backbone states under ``hidden``."""

    def __init__(self, rows: Dataset, states: CachedStates) -> None:
        if len(rows) != len(states):
            raise FeatureCacheMismatch(
                f"The split has {len(rows)} rows but its cache {len(states)}: rebuild the cache."
            )
        self.rows, self.states = rows, states

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index], "hidden": self.states[index]}


def pad_states(states: list[torch.Tensor], width: int) -> torch.Tensor:
    """Right-pads rows of states (length_i, d) with zeros to (B, width, d)."""
    batch = states[0].new_zeros(len(states), width, states[0].shape[-1])
    for i, row in enumerate(states):
        batch[i, : len(row)] = row
    return batch


@dataclass
class FeatureCache:
    """A complete cache that matches this run (from `load_or_build`)."""

    directory: Path
    manifest: dict

    def states(self, split: str) -> CachedStates:
        entry = self.manifest["splits"][split]
        return CachedStates(
            self.directory, entry, self.manifest["hidden_size"], self.manifest["identity"]["dtype"]
        )

    def attach(self, split: str, rows: Dataset) -> WithStates:
        return WithStates(rows, self.states(split))


def open_cache(directory: Path, identity: dict) -> FeatureCache | None:
    """The complete cache in `directory` if it matches `identity`; None when there is none.

    Raises:
        FeatureCacheMismatch: the cache is of other inputs, or one of its files is damaged.
    """
    path = directory / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    found = manifest.get("identity", {}) if manifest.get("format") == FORMAT else {}
    problems = differences(found, identity)
    if not problems:
        problems = _damaged_files(directory, manifest)
    if problems:
        raise FeatureCacheMismatch(
            f"The feature cache in {directory} does not fit this run:\n  - "
            + "\n  - ".join(problems)
            + f"\nDelete {directory}, set `feature_cache.rebuild: true` to rebuild it, or point "
            "`feature_cache.dir` at another folder."
        )
    return FeatureCache(directory, manifest)


def _damaged_files(directory: Path, manifest: dict) -> list[str]:
    width = manifest["hidden_size"] * DTYPES[manifest["identity"]["dtype"]].itemsize
    problems = []
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            path, expected = directory / shard["file"], shard["tokens"] * width
            size = path.stat().st_size if path.is_file() else None
            if size != expected:
                problems.append(f"file {shard['file']}: {size} bytes, the manifest says {expected}")
        if not (directory / entry["offsets"]).is_file():
            problems.append(f"file {entry['offsets']} is missing")
    return problems


def load_or_build(
    config: FeatureCacheConfig, identity: dict, job: CacheJob, group: RankGroup
) -> tuple[FeatureCache, bool]:
    """The matching cache in `config.dir`, written first when missing; and whether it was written.

    A folder without a manifest (an interrupted run's leftovers) is rebuilt; a foreign or damaged
    cache is refused unless `config.rebuild` is set.
    """
    directory = Path(config.dir)
    if not config.rebuild:
        cache = open_cache(directory, identity)
        if cache is not None:
            return cache, False
        if group.rank == 0 and leftovers(directory):
            warnings.warn(
                f"{directory} holds feature-cache files but no manifest: a run stopped while "
                "writing them. Rebuilding the cache.",
                stacklevel=2,
            )
    write_cache(directory, identity, job, group)
    cache = open_cache(directory, identity)
    if cache is None:
        raise RuntimeError(
            f"This rank sees no manifest in {directory} after rank 0 wrote it: put "
            "`feature_cache.dir` on a filesystem that every rank shares."
        )
    return cache, True


class FeatureCacheSupport:
    """What a data module offers so that a stage's feature cache can serve its splits.

    It lists its splits (`cache_splits`), batches rows as its loaders do (`collate_rows`), and
    names its `sequence_length` and `tokenizer_name`; once a stage sets `feature_cache`, its
    loaders read `loader_rows`, whose items carry their cached states under ``hidden``.
    """

    feature_cache: FeatureCache | None = None
    tokenizer_name: str | None = None

    @property
    def sequence_length(self) -> int:
        raise NotImplementedError

    def cache_splits(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def collate_rows(self, rows: list[dict]) -> dict:
        raise NotImplementedError

    def loader_rows(self, split: str) -> Dataset:
        rows = self.cache_splits()[split]
        return rows if self.feature_cache is None else self.feature_cache.attach(split, rows)
