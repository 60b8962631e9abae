"""Generation as a Lightning stage: ``python -m cola_lightning predict --config ...``.

Loads a CoLA model (usually from a stage checkpoint) and generates for every prompt of the
`PromptDataModule`, by latent actions or by the plain backbone's tokens. Each completion becomes
one record: prompt, completion, tokens, codes and log-probabilities.
"""

from __future__ import annotations

import torch

from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.rollout.engine import GenerationConfig, Generator
from cola_lightning.stages.base import CoLAStage

CODE_SOURCES = ("policy", "fixed", "reference")


class GenerationModule(CoLAStage):
    """Generates; trains nothing.

    Args:
        backbone: where the pretrained LM comes from.
        init_from: the stage checkpoint to generate with (stage 1b or later, for a policy).
        cola: sizes of the latent-action parts (must match the checkpoint).
        generation: lengths, samplers and stop conditions.
        mode: ``latent`` (policy + world model) or ``token`` (the plain backbone).
        code_source: ``policy`` (sample codes), ``fixed`` (always `fixed_code`), or ``reference``
            (the inverse dynamics model's codes of each prompt's reference continuation).
        fixed_code: the code used when `code_source` is ``fixed``.
        samples_per_prompt: completions generated for each prompt.
        seed: seed of the sampling generator (the same seed gives the same completions).
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        init_from: str | None = None,
        cola: CoLAConfig | None = None,
        generation: GenerationConfig | None = None,
        mode: str = "latent",
        code_source: str = "policy",
        fixed_code: int = 0,
        samples_per_prompt: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone, cola, init_from=init_from)
        if code_source not in CODE_SOURCES:
            raise ValueError(f"Unknown code_source {code_source!r}; use one of {CODE_SOURCES}.")
        self.generation = generation or GenerationConfig()
        self.mode, self.code_source, self.fixed_code = mode, code_source, fixed_code
        self.samples_per_prompt, self.seed = samples_per_prompt, seed
        self._generator: torch.Generator | None = None

    def on_predict_start(self) -> None:
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        engine = Generator(self.model, self.tokenizer, self.generation)
        records = [r for r in batch for _ in range(self.samples_per_prompt)]
        prompts = [r["prompt"] for r in records]
        rollout = engine.generate(prompts, self.mode, self._codes(engine, records), self._generator)
        return [
            {
                "prompt": record["prompt"],
                "completion": rollout.texts[i],
                "tokens": rollout.token_ids[i],
                "token_logprobs": rollout.token_logprobs[i],
                "codes": rollout.codes[i] if rollout.codes else None,
                "code_logprobs": rollout.code_logprobs[i] if rollout.code_logprobs else None,
                "finish": rollout.finish[i],
            }
            for i, record in enumerate(records)
        ]

    def _codes(self, engine: Generator, records: list[dict]):
        if self.mode != "latent" or self.code_source == "policy":
            return None
        if self.code_source == "fixed":
            return self.fixed_code
        if any(r["reference"] is None for r in records):
            raise ValueError("code_source 'reference' needs a reference for every prompt.")
        return engine.codes_from_reference(
            [r["prompt"] for r in records], [r["reference"] for r in records]
        )
