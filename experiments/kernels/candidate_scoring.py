"""Scoring K candidate codes at one position in the inject form: batched against the baselines.

    PYTHONPATH=. python experiments/kernels/candidate_scoring.py [--lengths 512 2048]
        [--candidates 64] [--layer 26] [--threads 1] [--repeats 3]

The embedded SmolLM2-135M (scripts/install.sh) with an inject-form world model at layer 26 (its top
4 layers, initialised from the backbone's), fp32 on CPU. For a prefix of T positions (random token
ids and codes, in the world model's KV cache) it times, in one process, the logits of K candidate
codes at position T:

* ``batched``: `CoLAModel.candidate_logits`, one pass with all K rows (the shared-prefix path);
* ``cached_decodes``: K one-token world-model decodes against the prefix cache (cropped back after
  each), what a per-candidate engine would do;
* ``full_passes``: K teacher-forced passes of the top layers over all T + 1 positions, read out at
  the last one (the reference the tests compare against).

Each is checked against the others (max abs logit difference) and printed as one JSON line per T,
with the world model's parameter counts in both forms. DESIGN.md section 7 has the design.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cola_lightning.models.backbone import Backbone, BackboneSpec, Readout
from cola_lightning.models.cola import CoLAConfig, CoLAModel

SOURCE = "embedded:smollm2-135m"


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of `repeats` calls and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def world_model_parameters(backbone: Backbone, layer: int) -> dict[str, int]:
    """Parameters of the world model (and codebook) in the merge form and the inject form."""
    counts = {}
    for form, spec in (
        ("merge", {"form": "merge"}),
        ("inject", {"form": "inject", "layer": layer}),
    ):
        model = CoLAModel(backbone, CoLAConfig(idm_layers=1, policy_layers=1, world_model=spec))
        counts[form] = sum(p.numel() for p in model.world_model.parameters())
    return counts


def measure(model: CoLAModel, length: int, count: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(length)
    vocab = model.backbone.config.vocab_size
    ids = torch.randint(0, vocab, (1, length + 1), generator=generator)
    hidden, _ = model.hidden_states(ids)
    prefix_codes = torch.randint(0, model.num_codes, (1, length), generator=generator)
    cache = model.world_model_cache()
    model.prefill_world_model(
        hidden[:, :length], prefix_codes, None, torch.arange(length)[None], cache
    )
    state = hidden[:, length:]
    candidates = torch.arange(count)[None] % model.num_codes
    position = torch.tensor([[length]])

    def batched():
        return model.candidate_logits(state, candidates, cache)[0]

    def cached_decodes():
        rows = []
        for k in range(count):
            code = candidates[:, k : k + 1]
            rows.append(model.world_model_logits(state, code, None, position, cache)[0, -1])
            cache.crop(-1)  # drop the decoded position: the next candidate sees the prefix
        return torch.stack(rows)

    def full_passes():
        rows = []
        for k in range(count):
            codes = torch.cat([prefix_codes, candidates[:, k : k + 1]], dim=1)
            top = model.world_model(hidden, model.codebook.embed(codes))
            rows.append(model.backbone(readout=Readout(top[:, -1:], normalize=True))[0, 0])
        return torch.stack(rows)

    batched_s, scores = timed(batched, repeats)
    decodes_s, decoded = timed(cached_decodes, repeats)
    full_s, full = timed(full_passes, 1)
    return {
        "T": length,
        "K": count,
        "batched_s": round(batched_s, 4),
        "cached_decodes_s": round(decodes_s, 4),
        "full_passes_s": round(full_s, 3),
        "speedup_vs_full_passes": round(full_s / batched_s, 1),
        "speedup_vs_cached_decodes": round(decodes_s / batched_s, 1),
        "max_abs_diff_vs_decodes": float((scores - decoded).abs().max()),
        "max_abs_diff_vs_full": float((scores - full).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--layer", type=int, default=26)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = Backbone.from_spec(BackboneSpec(source=SOURCE))
    params = world_model_parameters(backbone, args.layer)
    cola = CoLAConfig(
        num_codes=64,
        idm_layers=1,
        policy_layers=1,
        world_model={"form": "inject", "layer": args.layer},
    )
    model = CoLAModel(backbone, cola).eval()
    with torch.inference_mode():
        for length in args.lengths:
            row = measure(model, length, args.candidates, args.repeats)
            row.update(threads=args.threads, world_model_parameters=params)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
