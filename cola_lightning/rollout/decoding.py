"""One decode: the caches, masks and choices of a batch of sequences, token by token.

`DecodeState` prefills prompts into preallocated caches, then `advance` chooses a code (latent
mode) and a token per sequence and `feed_last_token` runs the chosen tokens through the caches.
`extend` appends new tokens to chosen sequences and keeps their caches, so multi-turn generation
(an agent's episode: its action, then the environment's answer) computes each position once
instead of prefilling the whole context every turn. `Generator` (engine.py) drives the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.kv_cache import PreallocatedCache
from cola_lightning.rollout.rl_maths import left_pad, position_ids


@dataclass
class Rollout:
    """Per sequence: the prompt and generated ids, the completion text, and per generated token
    its code and the code's log-probability under the policy (latent mode), and the token's
    log-probability. `finish` is ``eos``, ``stop`` or ``length``. With ``keep_states``, `states`
    holds per sequence the backbone's states (P + T - 1, d) at every position that precedes a
    token: what the policy reads, so a latent RL update need not run the backbone again.
    `prefilled` counts the positions the prefill (or a turn's extension) ran through the
    backbone."""

    prompt_ids: list[list[int]]
    token_ids: list[list[int]]
    texts: list[str]
    token_logprobs: list[list[float]]
    codes: list[list[int]] | None
    code_logprobs: list[list[float]] | None
    finish: list[str]
    states: list[torch.Tensor] | None = None
    prefilled: int = 0

    def backbone_positions(self) -> int:
        """Positions run through the backbone: those prefilled (each distinct prompt once, or
        the tokens a turn appended) and every generated token but the last (fed back to make
        the next)."""
        return self.prefilled + sum(max(len(t) - 1, 0) for t in self.token_ids)


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


class DecodeState:
    """The moving parts of a decode (`Generator`): caches, masks, and what was chosen."""

    states: list[torch.Tensor] | None = None  # the backbone's states, when kept

    def __init__(
        self,
        owner,
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
        rows = shared_prompt_rows(prompt_ids, device)
        self._prefill(ids, rows)
        distinct = prompt_ids if rows is None else [prompt_ids[r] for r in rows[0].tolist()]
        self.prefilled = sum(len(p) for p in distinct)
        if keep_states:
            self.states = [self.prompt_states]
        self._start_bookkeeping(len(prompt_ids), device)

    def _start_bookkeeping(self, batch: int, device: torch.device) -> None:
        """Empties what one decode chooses; `turn_start` is the cache column it starts feeding."""
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.finish = ["length"] * batch
        self.tokens: list[torch.Tensor] = []
        self.token_logprobs: list[torch.Tensor] = []
        self.codes: list[torch.Tensor] = []
        self.code_logprobs: list[torch.Tensor] = []
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.turn_start = self.mask.shape[1]

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

    def extend(
        self,
        rows: list[int],
        appended: list[list[int]],
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> None:
        """Keeps the sequences `rows` (indices into this batch) and appends to each, after its
        last generated token, the tokens `appended` (one list per kept row), so that the next
        decode continues their caches: only those tokens run through the backbone and policy.

        Every sequence was fed the same number of steps, so a sequence that stopped early fed
        padding after its end: those columns are masked out here. Each row's last generated
        token was never fed; it leads its appended tokens. Not for the inject form (its cache
        of the context holds the inverse dynamics model's codes) nor for kept states.
        """
        if self.world_model_cache is not None or self.states is not None:
            raise ValueError("extend supports the merge world model without keep_states.")
        columns = torch.arange(self.mask.shape[1], device=self.mask.device)
        stale = columns[None] >= (self.turn_start + self.lengths - 1)[:, None]
        last = torch.stack(self.tokens, dim=1).gather(1, (self.lengths - 1)[:, None])[:, 0]
        keep = torch.tensor(rows, device=self.mask.device)
        chunks = [[int(last[r])] + list(a) for r, a in zip(rows, appended, strict=True)]
        ids, chunk_mask = (t.to(keep.device) for t in left_pad(chunks, self.tokenizer.pad_token_id))
        self.mask = torch.cat([self.mask.masked_fill(stale, 0)[keep], chunk_mask], dim=-1)
        positions = position_ids(self.mask)[:, -ids.shape[1] :]
        caches = [self.backbone_cache] + ([self.policy_cache] if self.latent else [])
        if rows != list(range(len(self.lengths))):
            for cache in caches:
                cache.batch_select_indices(keep)
        states = self.model.hidden_states if self.latent else self.model.token_states
        hidden, _ = states(ids, self.mask, positions, self.backbone_cache, use_cache=True)
        if self.latent:
            logits, _ = self.model.policy_logits(
                hidden, self.mask, positions, self.policy_cache, use_cache=True
            )
            self.policy_last = logits[:, -1]
        self.hidden, self.positions = hidden[:, -1:], positions
        self.prompt_ids, self.prefilled, self.generator = chunks, sum(map(len, chunks)), generator
        self._start_bookkeeping(len(rows), keep.device)

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
            prefilled=self.prefilled,
        )
