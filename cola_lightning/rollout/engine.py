"""KV-cached batched generation through the policy and the world model (or the plain backbone).

Latent mode, per new token (DESIGN.md section 1, "Generation"): the backbone gives h_t from its KV
cache, the policy gives pi(. | x_1..x_t) from its own KV cache, a code a_t is chosen (sampled,
greedy, or forced), the world model turns (h_t, a_t) into token logits, and the token is chosen
(greedy by default, as in the paper's RL, so all exploration is in the K codes). Token mode is the
plain backbone sampling tokens: the baseline, through the same interface.

In the inject form the world model keeps its own KV cache for its copies of the top layers: the
prompt's positions enter it with the inverse dynamics model's codes (the prompt's next tokens are
known, as in training), every generated position with the code chosen for it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import DynamicCache

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.kv_cache import PreallocatedCache
from cola_lightning.rollout.rl_maths import left_pad, position_ids
from cola_lightning.rollout.sampling import Sampler

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


@dataclass
class Rollout:
    """Per sequence: the prompt and generated ids, the completion text, and per generated token
    its code and the code's log-probability under the policy (latent mode), and the token's
    log-probability. `finish` is ``eos``, ``stop`` or ``length``. With ``keep_states``, `states`
    holds per sequence the backbone's states (P + T - 1, d) at every position that precedes a
    token: what the policy reads, so a latent RL update need not run the backbone again."""

    prompt_ids: list[list[int]]
    token_ids: list[list[int]]
    texts: list[str]
    token_logprobs: list[list[float]]
    codes: list[list[int]] | None
    code_logprobs: list[list[float]] | None
    finish: list[str]
    states: list[torch.Tensor] | None = None

    def backbone_positions(self) -> int:
        """Positions run through the backbone: each distinct prompt once (the shared prefill)
        and every generated token but the last (fed back to make the next)."""
        prompts = sum(len(p) for p in {tuple(p) for p in self.prompt_ids})
        return prompts + sum(max(len(t) - 1, 0) for t in self.token_ids)


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


def shared_prompt_rows(
    prompt_ids: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For prompts that repeat: the first row of each distinct prompt, and each row's distinct
    prompt (indices into the first); None when every prompt is distinct."""
    index: dict[tuple[int, ...], int] = {}
    first, rows = [], []
    for row, prompt in enumerate(prompt_ids):
        key = tuple(prompt)
        if key not in index:
            index[key] = len(first)
            first.append(row)
        rows.append(index[key])
    if len(first) == len(prompt_ids):
        return None
    return torch.tensor(first, device=device), torch.tensor(rows, device=device)


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
        if mode not in MODES:
            raise ValueError(f"Unknown generation mode {mode!r}; use one of {MODES}.")
        if codes is not None and mode != "latent":
            raise ValueError("Forced codes need mode='latent'.")
        prompt_ids = self.encode(prompts)
        forced, forced_lengths = self._forced_codes(codes, len(prompt_ids))
        with eval_mode(self.model):
            state = _DecodeState(self, prompt_ids, mode == "latent", generator, keep_states)
            last = self.config.max_new_tokens - 1
            for step in range(self.config.max_new_tokens):
                state.advance(None if forced is None else forced[:, min(step, forced.shape[1] - 1)])
                if forced_lengths is not None:
                    state.done |= forced_lengths <= step + 1
                if step == last or all_ranks_done(state.done, self.sharded):
                    break
                state.feed_last_token()
        return state.rollout()

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


def prompt_codes(model: CoLAModel, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inverse dynamics model's codes (B, P-1) for the steps inside left-padded prompts."""
    return model.inverse_dynamics.code_logits(hidden, mask).argmax(-1)


def prefill_prompt(
    model: CoLAModel, hidden: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
) -> DynamicCache | None:
    """The world model's cache over the prompt's positions but the last (inject form), or None.

    Those positions carry the inverse dynamics model's codes; the last one gets its code from
    the policy when generation starts.
    """
    cache = model.world_model_cache()
    if cache is not None and hidden.shape[1] > 1:
        codes = prompt_codes(model, hidden, mask)
        model.prefill_world_model(hidden[:, :-1], codes, mask[:, :-1], positions[:, :-1], cache)
    return cache


class _DecodeState:
    """The moving parts of one `Generator.generate` call: caches, masks, and what was chosen."""

    states: list[torch.Tensor] | None = None  # the backbone's states, when kept

    def __init__(
        self,
        owner: Generator,
        prompt_ids: list[list[int]],
        latent: bool,
        generator: torch.Generator | list[torch.Generator] | None,
        keep_states: bool = False,
    ) -> None:
        self.model, self.config, self.generator = owner.model, owner.config, generator
        self.tokenizer, self.latent, self.prompt_ids = owner.tokenizer, latent, prompt_ids
        device = owner.device
        ids, self.mask = (t.to(device) for t in left_pad(prompt_ids, self.tokenizer.pad_token_id))
        self.positions = position_ids(self.mask)
        self._prefill(ids, shared_prompt_rows(prompt_ids, device))
        if keep_states:
            self.states = [self.prompt_states]
        batch = len(prompt_ids)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.finish = ["length"] * batch
        self.tokens: list[torch.Tensor] = []
        self.token_logprobs: list[torch.Tensor] = []
        self.codes: list[torch.Tensor] = []
        self.code_logprobs: list[torch.Tensor] = []
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)

    def _prefill(self, ids: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Reads the prompts into preallocated caches, each distinct prompt once.

        With `rows` = (first row of each distinct prompt, each row's distinct prompt), a prompt
        repeated G times (an RL group) is prefilled once and its states and caches fanned out.
        """
        capacity = ids.shape[1] + self.config.max_new_tokens
        self.backbone_cache = PreallocatedCache(capacity)
        first = slice(None) if rows is None else rows[0]
        mask, positions = self.mask[first], self.positions[first]
        states = self.model.hidden_states if self.latent else self.model.token_states
        hidden, _ = states(ids[first], mask, positions, self.backbone_cache, use_cache=True)
        caches = [self.backbone_cache]
        self.world_model_cache = None
        if self.latent:
            self.policy_cache = PreallocatedCache(capacity)
            logits, _ = self.model.policy_logits(
                hidden, mask, positions, self.policy_cache, use_cache=True
            )
            self.world_model_cache = prefill_prompt(self.model, hidden, mask, positions)
            caches += [self.policy_cache, self.world_model_cache]
        if rows is not None:
            hidden = hidden[rows[1]]
            for cache in caches:
                if cache is not None:
                    cache.batch_select_indices(rows[1])
            if self.latent:
                logits = logits[rows[1]]
        self.prompt_states, self.hidden = hidden, hidden[:, -1:]
        if self.latent:
            self.policy_last = logits[:, -1]

    def advance(self, forced_code: torch.Tensor | None) -> None:
        """Chooses one code (latent mode) and one token for every sequence still running."""
        if self.latent:
            code = forced_code
            if code is None:
                code = self.config.code.choose(self.policy_last, self.generator)
            logprob = self.config.code.log_probs(self.policy_last).gather(-1, code[:, None])
            self.codes.append(code)
            self.code_logprobs.append(logprob[:, 0])
            # positions[:, -1:]: before the first feed_last_token they still cover the prompt
            logits = self.model.world_model_logits(
                self.hidden,
                code[:, None],
                self.mask,
                self.positions[:, -1:],
                self.world_model_cache,
            )[:, -1]
        else:
            logits = self.model.token_logits(self.hidden)[:, -1]
        token = self.config.token.choose(logits, self.generator)
        token = token.masked_fill(self.done, self.tokenizer.pad_token_id)
        self.tokens.append(token)
        self.token_logprobs.append(
            self.config.token.log_probs(logits).gather(-1, token[:, None])[:, 0]
        )
        self.lengths += (~self.done).long()
        self._update_done(token)

    def _update_done(self, token: torch.Tensor) -> None:
        eos = self.tokenizer.eos_token_id
        for row in torch.nonzero(~self.done).flatten().tolist():
            if self.config.stop_at_eos and int(token[row]) == eos:
                self.done[row], self.finish[row] = True, "eos"
            elif self.config.stop_strings and self._hits_stop_string(row):
                self.done[row], self.finish[row] = True, "stop"

    def _hits_stop_string(self, row: int) -> bool:
        longest = max(len(s) for s in self.config.stop_strings)
        tail = [int(t[row]) for t in self.tokens[-(longest + 4) :]]
        text = self.tokenizer.decode(tail)
        return any(stop in text for stop in self.config.stop_strings)

    def feed_last_token(self) -> None:
        """Runs the last tokens through the backbone (and policy) caches."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        self.positions = self.positions[:, -1:] + 1
        token = self.tokens[-1][:, None]
        states = self.model.hidden_states if self.latent else self.model.token_states
        self.hidden, self.backbone_cache = states(
            token, self.mask, self.positions, self.backbone_cache, use_cache=True
        )
        if self.latent:
            logits, self.policy_cache = self.model.policy_logits(
                self.hidden, self.mask, self.positions, self.policy_cache, use_cache=True
            )
            self.policy_last = logits[:, -1]
        if self.states is not None:
            self.states.append(self.hidden)

    def rollout(self) -> Rollout:
        lengths = self.lengths.tolist()

        def rows(steps: list[torch.Tensor]) -> list[list]:
            table = torch.stack(steps, dim=1).tolist()
            return [row[:n] for row, n in zip(table, lengths, strict=True)]

        token_ids = rows(self.tokens)
        states = None
        if self.states is not None:
            # a row's states: its prompt's (without padding), then one per token it fed back
            fed = torch.cat(self.states, dim=1)
            width = self.prompt_states.shape[1]
            states = [
                fed[row, width - len(prompt) : width + n - 1]
                for row, (prompt, n) in enumerate(zip(self.prompt_ids, lengths, strict=True))
            ]
        return Rollout(
            prompt_ids=self.prompt_ids,
            token_ids=token_ids,
            texts=[self.tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids],
            token_logprobs=rows(self.token_logprobs),
            codes=rows(self.codes) if self.latent else None,
            code_logprobs=rows(self.code_logprobs) if self.latent else None,
            finish=self.finish,
            states=states,
        )
