"""CoLA's diversity claim: latent-action sampling gives more semantically diverse text.

    python experiments/diversity/run.py \
        --init-from checkpoints/quickstart/behavior_cloning/last.ckpt \
        [--prefixes ../shared/data/gsm8k_test.jsonl] [--n 16] [--m 4] [--new-tokens 32]

For N prefixes (the first --prefix-tokens tokens of GSM8K test questions), M continuations each by
(a) latent actions with uniformly random codes, (b) latent actions from the policy, (c) token
sampling of the plain backbone at temperature 1, (d) uniformly random tokens. Tokens are greedy in
(a) and (b), as in the paper. Prints one JSON line per method with the mean within-group cosine
similarity (embedded all-MiniLM-L6-v2) and its inverse, the paper's "quality diversity"
(paper, with bge-m3: 1.92 latent, 1.54 token, 1.30 random).
"""

from __future__ import annotations

import argparse
import json

import torch

from cola_lightning.checkpoints.format import load_stage_checkpoint
from cola_lightning.data.files import read_field, read_jsonl
from cola_lightning.metrics.diversity import DEFAULT_ENCODER, SemanticDiversity
from cola_lightning.models.backbone import Backbone, BackboneSpec, load_tokenizer
from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.engine import GenerationConfig, Generator
from cola_lightning.rollout.sampling import Sampler

SOURCE = "embedded:smollm2-135m"


def prefixes(path: str, count: int, tokens: int, tokenizer) -> list[list[int]]:
    result = []
    for number, record in read_jsonl(path):
        ids = tokenizer(read_field(path, number, record, "question")).input_ids
        result.append(ids[:tokens])
        if len(result) == count:
            return result
    raise ValueError(f"{path} has fewer than {count} questions.")


def continuations(engine: Generator, method: str, prompts, m: int, rng: torch.Generator):
    """M continuations per prompt by one method, grouped per prompt."""
    repeated = [p for p in prompts for _ in range(m)]
    steps, codes, vocab = (
        engine.config.max_new_tokens,
        engine.model.num_codes,
        len(engine.tokenizer),
    )
    if method == "random_tokens":
        ids = torch.randint(0, vocab, (len(repeated), steps), generator=rng).tolist()
        texts = [engine.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    elif method == "latent_random_codes":
        forced = torch.randint(0, codes, (len(repeated), steps), generator=rng).tolist()
        texts = engine.generate(repeated, "latent", codes=forced, generator=rng).texts
    elif method == "latent_policy":
        texts = engine.generate(repeated, "latent", generator=rng).texts
    else:
        token_engine = Generator(
            engine.model, engine.tokenizer, GenerationConfig(steps, token=Sampler(temperature=1.0))
        )
        texts = token_engine.generate(repeated, "token", generator=rng).texts
    return [texts[i : i + m] for i in range(0, len(texts), m)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init-from", required=True)
    parser.add_argument("--prefixes", default="../shared/data/gsm8k_test.jsonl")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--prefix-tokens", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(SOURCE)
    model = CoLAModel(Backbone.from_spec(BackboneSpec(source=SOURCE)))
    load_stage_checkpoint(model, args.init_from)
    engine = Generator(model.eval(), tokenizer, GenerationConfig(args.new_tokens))
    prompts = prefixes(args.prefixes, args.n, args.prefix_tokens, tokenizer)
    metric = SemanticDiversity(args.encoder)
    methods = ("latent_random_codes", "latent_policy", "token_sampling", "random_tokens")
    for method in methods:
        rng = torch.Generator().manual_seed(0)
        groups = continuations(engine, method, prompts, args.m, rng)
        metric.reset()
        metric.update(groups)
        scores = metric.compute()
        print(
            json.dumps(
                {
                    "checkpoint": args.init_from,
                    "method": method,
                    "n": args.n,
                    "m": args.m,
                    "new_tokens": args.new_tokens,
                    "encoder": args.encoder,
                    "similarity": round(scores["similarity"].item(), 4),
                    "quality_diversity": round(scores["quality_diversity"].item(), 3),
                    "example": groups[0][0],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
