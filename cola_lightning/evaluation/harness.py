"""A CoLA model for lm-evaluation-harness: ``lm_eval --model cola --model_args checkpoint=...``.

    lm_eval --model cola --model_args checkpoint=<stage ckpt or export dir>,mode=latent \
        --tasks <task> --include_path <directory of local task yaml files>

Needs the ``eval`` extra (``pip install -e ".[eval]"``) and the registration hook that
``scripts/install.sh`` installs (`cola_lightning.evaluation.lm_eval_hook`); lm-eval 0.4.13 reads
no entry points, so the hook is what makes the name ``cola`` known to its CLI.

Modes: ``latent`` scores and decodes with the world model under the policy's codes (greedy codes
for log-likelihoods, the `code` sampler for generation); ``token`` uses the plain backbone.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from cola_lightning.checkpoints.export import load_cola
from cola_lightning.evaluation.likelihood import continuation_logprobs, token_logprobs
from cola_lightning.rollout.engine import MODES, GenerationConfig, Generator
from cola_lightning.rollout.sampling import Sampler


class CoLALM(LM):
    """lm-eval's `LM` interface over a CoLA model.

    Args:
        checkpoint: a stage checkpoint, an export directory or a released CoLA directory.
        mode: ``latent`` or ``token``.
        batch_size: sequences per forward pass (lm-eval passes its ``--batch_size``).
        max_new_tokens: default generation length when a task's ``max_gen_toks`` is absent.
        device: where the model runs (lm-eval passes its ``--device``); default CPU.
        seed: seed of code sampling in latent generation.
        max_length: most tokens one forward pass reads (default: the backbone's
            `max_position_embeddings`); longer documents are scored in rolling windows.
    """

    def __init__(
        self,
        checkpoint: str,
        mode: str = "latent",
        batch_size: int | str = 8,
        max_new_tokens: int = 256,
        device: str | None = None,
        seed: int = 0,
        max_length: int | None = None,
        **unused,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
        self.model, self.tokenizer = load_cola(checkpoint)
        self.model.to(device or "cpu")
        self.mode, self.max_new_tokens = mode, int(max_new_tokens)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.generator = torch.Generator(device or "cpu").manual_seed(int(seed))
        default_length = self.model.backbone.config.max_position_embeddings
        self.max_length = int(max_length or default_length)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [tuple(request.args) for request in requests]
        return continuation_logprobs(self.model, self.tokenizer, pairs, self.mode, self.batch_size)

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Whole-text log-likelihoods, conditioned on EOS, every token scored once: a document
        longer than `max_length` is read in disjoint windows of `max_length` tokens, each after
        as much of the text before it as fits (lm-eval's rolling windows)."""
        eos = self.tokenizer.eos_token_id
        windows, owners = [], []
        for index, request in enumerate(requests):
            ids = self.tokenizer(request.args[0], add_special_tokens=False).input_ids
            rolling = get_rolling_token_windows(ids, eos, self.max_length, context_len=1)
            for window in map(make_disjoint_window, rolling):
                windows.append(window)
                owners.append(index)
        scores = token_logprobs(
            self.model, windows, self.tokenizer.pad_token_id, self.mode, self.batch_size
        )
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores, strict=True):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for request in requests:
            context, options = request.args
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sampled = options.get("do_sample", False) and options.get("temperature", 0) > 0
            config = GenerationConfig(
                max_new_tokens=int(options.get("max_gen_toks", self.max_new_tokens)),
                code=Sampler(temperature=1.0) if self.mode == "latent" else Sampler(greedy=True),
                token=Sampler(temperature=options["temperature"])
                if sampled
                else Sampler(greedy=True),
                stop_strings=until,
            )
            text = (
                Generator(self.model, self.tokenizer, config)
                .generate([context], self.mode, generator=self.generator)
                .texts[0]
            )
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs
