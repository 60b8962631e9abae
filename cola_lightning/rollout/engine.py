"""KV-cached batched generation through the policy and the world model (or the plain backbone).

Latent mode, per new token (DESIGN.md section 1, "Generation"): the backbone gives h_t from its KV
cache, the policy gives pi(. | x_1..x_t) from its own KV cache, a code a_t is chosen (sampled,
greedy, or forced), the world model turns (h_t, a_t) into token logits, and the token is chosen
(greedy by default, as in the paper's RL, so all exploration is in the K codes). Token mode is the
plain backbone sampling tokens: the baseline, through the same interface.

In the inject form the world model keeps its own KV cache for its copies of the top layers: the
prompt's positions enter it with the inverse dynamics model's codes (the prompt's next tokens are
known, as in training), every generated position with the code chosen for it.

Multi-turn generation (`begin_turns`, then `next_turn`) keeps the caches between calls: a turn
appends its new tokens (the environment's answer) and continues, computing no position twice.
The caches and the per-token choices live in `DecodeState` (decoding.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.decoding import DecodeState, Rollout
from cola_lightning.rollout.rl_maths import left_pad
from cola_lightning.rollout.sampling import Sampler

__all__ = [
    "MODES",
    "GenerationConfig",
    "Generator",
    "Rollout",
    "eval_mode",
    "left_pad",
    "require_sampled_actions",
]

MODES = ("latent", "token")


@dataclass
class GenerationConfig:
    """What to generate and how to choose codes and tokens.

    Args:
        max_new_tokens: most tokens generated per sequence.
        code: how codes are chosen from the policy (latent mode).
        token: how tokens are chosen from the world model's (or backbone's) logits.
        stop_strings: a sequence ends once its completion contains one of these.
        stop_at_eos: a sequence ends at the tokenizer's EOS token.
    """

    max_new_tokens: int = 64
    code: Sampler = field(default_factory=Sampler)
    token: Sampler = field(default_factory=lambda: Sampler(greedy=True))
    stop_strings: list[str] = field(default_factory=list)
    stop_at_eos: bool = True


@contextmanager
def eval_mode(module: nn.Module):
    """Every submodule in eval mode (no dropout: LoRA's included), each restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Unknown generation mode {mode!r}; use one of {MODES}.")


def require_sampled_actions(config: GenerationConfig, mode: str, consequence: str) -> None:
    """Refuses a config that picks a mode's actions greedily where they must be sampled.

    The actions are the codes in latent mode and the tokens in token mode. A YAML
    `token: {temperature: 1.0}` keeps the token sampler's default `greedy: true`, which silently
    makes every sample of a prompt the greedy completion.

    Args:
        config: the generation settings to check.
        mode: ``latent`` or ``token``.
        consequence: what greedy actions would do here, for the message.
    """
    check_mode(mode)
    name = "code" if mode == "latent" else "token"
    if getattr(config, name).greedy:
        raise ValueError(
            f"{mode.capitalize()}-mode {name}s are chosen greedily (generation.{name}.greedy is "
            f"true): {consequence}. Set generation.{name}: {{greedy: false, temperature: 1.0}}."
        )


def all_ranks_done(done: torch.Tensor, sharded: bool) -> bool:
    """Whether every row is done, on every rank when the model is sharded.

    A sharded forward is a collective, so ranks must leave the decode loop together: a rank whose
    rows are done keeps stepping (on padding) until every rank's are.
    """
    running = (~done).any().to(torch.int32)
    if sharded and dist.is_available() and dist.is_initialized():
        dist.all_reduce(running, op=dist.ReduceOp.MAX)
    return not bool(running)


class Generator:
    """Batched generation with a CoLA model.

    Args:
        model: the CoLA model (token mode uses only its backbone).
        tokenizer: the backbone's tokenizer (pad and EOS ids, decoding, stop strings).
        config: generation settings.
    """

    def __init__(self, model: CoLAModel, tokenizer, config: GenerationConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        self.sharded = any(isinstance(p, DTensor) for p in model.parameters())

    def encode(self, prompts: list[str] | list[list[int]]) -> list[list[int]]:
        if prompts and isinstance(prompts[0], str):
            return [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        return [list(p) for p in prompts]

    @torch.no_grad()  # not inference_mode: FSDP2's gathered parameters must stay ordinary
    def codes_from_reference(
        self, prompts: list[str] | list[list[int]], references: list[str]
    ) -> list[list[int]]:
        """The inverse dynamics model's codes for each reference continuation of its prompt.

        Generating with these codes (greedy tokens) replays the reference's "intent"; editing
        them steers the replay.
        """
        result = []
        with eval_mode(self.model):
            for prompt, reference in zip(self.encode(prompts), references, strict=True):
                continuation = self.tokenizer(reference, add_special_tokens=False).input_ids
                ids = torch.tensor([prompt + continuation], device=self.device)
                hidden, _ = self.model.hidden_states(ids)
                codes = self.model.inverse_dynamics.code_logits(hidden).argmax(-1)[0]
                # step t (predicting token t+1) for the steps that produce the continuation
                result.append(codes[len(prompt) - 1 :].tolist())
        return result

    @torch.no_grad()  # not inference_mode: FSDP2's gathered parameters must stay ordinary
    def generate(
        self,
        prompts: list[str] | list[list[int]],
        mode: str = "latent",
        codes: torch.Tensor | list[list[int]] | int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        keep_states: bool = False,
    ) -> Rollout:
        """Generates a continuation of every prompt.

        Args:
            prompts: texts or token-id lists.
            mode: ``latent`` (policy + world model) or ``token`` (the plain backbone).
            codes: force the codes instead of sampling them: one code for every step (int), or a
                code sequence per prompt; a prompt's generation stops when its codes run out.
            generator: random generator for code and token sampling, or one per prompt.
            keep_states: return the backbone's states in `Rollout.states`.
        """
        check_mode(mode)
        if codes is not None and mode != "latent":
            raise ValueError("Forced codes need mode='latent'.")
        prompt_ids = self.encode(prompts)
        forced, forced_lengths = self._forced_codes(codes, len(prompt_ids))
        with eval_mode(self.model):
            state = DecodeState(self, prompt_ids, mode == "latent", generator, keep_states)
            self._decode(state, forced, forced_lengths)
        return state.rollout()

    @torch.no_grad()
    def begin_turns(
        self,
        prompts: list[str] | list[list[int]],
        mode: str = "latent",
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> tuple[Rollout, DecodeState]:
        """The first turn of a multi-turn generation: as `generate`, and the state that
        `next_turn` continues."""
        check_mode(mode)
        with eval_mode(self.model):
            state = DecodeState(self, self.encode(prompts), mode == "latent", generator)
            self._decode(state)
        return state.rollout(), state

    @torch.no_grad()
    def next_turn(
        self,
        state: DecodeState,
        rows: list[int],
        appended: list[list[int]],
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Rollout:
        """Continues the sequences `rows` of the last turn after appending `appended` to each
        (see `DecodeState.extend`): the same as generating from each whole context again."""
        with eval_mode(self.model):
            state.extend(rows, appended, generator)
            self._decode(state)
        return state.rollout()

    def _decode(self, state: DecodeState, forced=None, forced_lengths=None) -> None:
        """Chooses and feeds tokens until every row is done or the token limit is reached."""
        last = self.config.max_new_tokens - 1
        for step in range(self.config.max_new_tokens):
            state.advance(None if forced is None else forced[:, min(step, forced.shape[1] - 1)])
            if forced_lengths is not None:
                state.done |= forced_lengths <= step + 1
            if step == last or all_ranks_done(state.done, self.sharded):
                break
            state.feed_last_token()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _forced_codes(self, codes, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Forced codes as (B, N) padded with their last code, and each row's length (or None)."""
        device = self.device
        if codes is None:
            return None, None
        if isinstance(codes, int):
            codes = [[codes]] * batch
            lengths = None
        else:
            codes = [list(row) for row in codes]
            lengths = torch.tensor([len(row) for row in codes], device=device)
        if len(codes) != batch or any(len(row) == 0 for row in codes):
            raise ValueError(f"Forced codes need one non-empty code list per prompt ({batch}).")
        width = max(len(row) for row in codes)
        padded = torch.tensor([row + row[-1:] * (width - len(row)) for row in codes], device=device)
        if padded.min() < 0 or padded.max() >= self.model.num_codes:
            raise ValueError(f"Forced codes must lie in [0, {self.model.num_codes}).")
        return padded, lengths
