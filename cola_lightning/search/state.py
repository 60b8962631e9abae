"""Generation states that a search tree can fork, and the batched decoding that continues them.

A node holds its caches as a chain of segments (`segments.py`), so forking copies nothing and
recomputes nothing. Continuing a batch of nodes concatenates each chain into one left-padded
cache, exactly the layout the engine's own prompts have. The world model's cache is filled as the
engine's is: the prompt's positions with the inverse dynamics model's codes, each generated
position with the code chosen for it. `TreeDecoder.cost` counts every backbone position computed;
several searches' continuations can run as one batch (`Lockstep`), each charged its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.decoding import DecodeState, prefill_prompt
from cola_lightning.rollout.engine import GenerationConfig, left_pad
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.search.lockstep import Lockstep
from cola_lightning.search.segments import (
    CACHES,
    LAG,
    Segment,
    batched_cache,
    empty_kv,
    row_kv,
)


@dataclass
class NodeState:
    """Everything needed to continue a text: every token so far has been fed to the caches.

    Args:
        generated: token ids generated after the prompt.
        chain: the segments from the root (the prompt's) to this node, shared with ancestors.
        hidden: the backbone state h_t at the last token (d,).
        policy_last: policy logits pi(. | x_1..x_t) (K,), latent searches only.
        q_last: Q(s_t, .) for every code (K,), when a Q-model is present.
        finished: the text ended (EOS or a stop string); it cannot be continued.
    """

    generated: list[int]
    chain: list[Segment]
    hidden: torch.Tensor | None
    policy_last: torch.Tensor | None = None
    q_last: torch.Tensor | None = None
    finished: bool = False

    @property
    def length(self) -> int:
        """Positions held by the caches (prompt + generated)."""
        return sum(s.length for s in self.chain)


@dataclass
class Continuation:
    """What one row of a `TreeDecoder.continue_states` call produced."""

    tokens: list[int]
    codes: list[int]
    code_logprobs: list[float]
    token_logprobs: list[float]
    finish: str
    state: NodeState
    q_taken: float | None = None  # Q(s, a) of the last step's code: the Q-model's final value


@dataclass
class SearchCost:
    """Compute spent by one search: the output row's cost fields."""

    backbone_tokens: int = 0
    world_model_evals: int = 0
    nodes: int = 0
    rounds: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class _ForcedChoice(Sampler):
    """A sampler whose choice is given (the first token of a token-level edge)."""

    def __init__(self, inner: Sampler, tokens: torch.Tensor) -> None:
        super().__init__(greedy=True, temperature=inner.temperature)
        self.inner, self.tokens = inner, tokens

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.inner.log_probs(logits)

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None = None):
        return self.tokens


class _ForkableState(DecodeState):
    """The engine's decode state, started from node states, with a Q-model cache beside.

    It reuses the engine's `advance` (which extends the world model's cache, inject form) and
    `feed_last_token`, and adds: per-row snapshots of the state after each row's last real token
    (rows stop at different steps), the Q-model's cache, and the count of backbone positions
    computed.
    """

    def __init__(self, decoder: TreeDecoder, nodes: list[NodeState], config, latent, generator):
        self.model, self.config, self.generator = decoder.model, config, generator
        self.tokenizer, self.latent, self.q_model = decoder.tokenizer, latent, decoder.q_model
        self.prompt_ids = [[] for _ in nodes]
        device = nodes[0].hidden.device
        lengths = [n.length for n in nodes]
        self.width = width = max(lengths)
        self.mask = torch.zeros(len(nodes), width, dtype=torch.long, device=device)
        for row, n in enumerate(lengths):
            self.mask[row, width - n :] = 1
        self.positions = torch.tensor(lengths, device=device)[:, None] - 1
        caches = [batched_cache(nodes, name, width - LAG.get(name, 0)) for name in CACHES]
        self.backbone_cache, self.policy_cache, self.q_cache, self.world_model_cache = caches
        self.hidden = torch.stack([n.hidden for n in nodes])[:, None]
        if latent:
            self.policy_last = torch.stack([n.policy_last for n in nodes])
        self.q_last = torch.stack([n.q_last for n in nodes]) if self.q_model else None
        self._start_bookkeeping(len(nodes), device)

    def _start_bookkeeping(self, batch: int, device: torch.device) -> None:
        super()._start_bookkeeping(batch, device)
        self.snapshot = {"hidden": self.hidden[:, 0].clone()}
        if self.latent:
            self.snapshot["policy_last"] = self.policy_last.clone()
        if self.q_last is not None:
            self.snapshot["q_last"] = self.q_last.clone()
        self.q_taken = torch.zeros(batch, device=device)
        self.live = ~self.done

    def advance(self, forced_code: torch.Tensor | None) -> None:
        self.live = ~self.done
        q_before = self.q_last
        super().advance(forced_code)
        if q_before is not None and self.latent:
            taken = q_before.gather(-1, self.codes[-1][:, None])[:, 0].float()
            self.q_taken = torch.where(self.live, taken, self.q_taken)

    def feed_last_token(self) -> None:
        super().feed_last_token()
        if self.q_model is not None:
            q, self.q_cache = self.q_model(
                self.hidden, self.mask, self.positions, self.q_cache, use_cache=True
            )
            self.q_last = q[:, -1]
        live = self.live
        self.snapshot["hidden"][live] = self.hidden[live, 0]
        if self.latent:
            self.snapshot["policy_last"][live] = self.policy_last[live]
        if self.q_last is not None:
            self.snapshot["q_last"][live] = self.q_last[live]

    def segment(self, row: int, start: int, length: int) -> Segment:
        """Row `row`'s cache columns [start, start + length) as a segment (copied out).

        `start` is the backbone's column; each cache's own columns are `LAG` to its left.
        """
        caches = (self.backbone_cache, self.policy_cache, self.q_cache, self.world_model_cache)
        kv = {}
        for name, cache in zip(CACHES, caches, strict=True):
            if cache is not None:
                begin = start - LAG.get(name, 0)
                kv[name] = row_kv(cache, row, begin, begin + length)
        return Segment(kv, length)


@dataclass
class TreeDecoder:
    """Starts and continues node states in batches, counting the compute spent.

    Args:
        model: the CoLA model (token-level searches use only its backbone).
        tokenizer: the backbone's tokenizer.
        q_model: the Q-model, or None; its cache rides along with the others.
        stop_strings: a text also ends once its new tokens contain one of these.
        stop_at_eos: a text ends at EOS.
        lockstep: batches this decoder's continuations with other searches' (None: alone).
    """

    model: CoLAModel
    tokenizer: object
    q_model: torch.nn.Module | None = None
    stop_strings: list[str] = field(default_factory=list)
    stop_at_eos: bool = True
    cost: SearchCost = field(default_factory=SearchCost)
    lockstep: Lockstep | None = None

    def config(self, code: Sampler, token: Sampler) -> GenerationConfig:
        return GenerationConfig(
            code=code, token=token, stop_strings=self.stop_strings, stop_at_eos=self.stop_at_eos
        )

    @torch.no_grad()  # not inference_mode: FSDP2 cannot gather parameters inside it
    def roots(self, prompt_ids: list[list[int]], latent: bool = True) -> list[NodeState]:
        """Prefills each prompt once: the root states.

        Latent roots hold the states the latent parts read (the layer-L states in the inject
        form) and, in the inject form, the world model's cache over the prompt; token-level
        roots hold the plain LM's final-normed states.
        """
        device = next(self.model.parameters()).device
        ids, mask = (t.to(device) for t in left_pad(prompt_ids, self.tokenizer.pad_token_id))
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        states = self.model.hidden_states if latent else self.model.token_states
        hidden, backbone = states(ids, mask, positions, use_cache=True)
        self.cost.backbone_tokens += int(mask.sum())
        caches = {"backbone": backbone}
        policy = q = None
        if latent:
            policy, caches["policy"] = self.model.policy_logits(
                hidden, mask, positions, use_cache=True
            )
            world_model = prefill_prompt(self.model, hidden, mask, positions)
            if world_model is not None:
                caches["world_model"] = world_model
        if self.q_model is not None:
            q, caches["q"] = self.q_model(hidden, mask, positions, use_cache=True)
        width = ids.shape[1]
        nodes = []
        for row, prompt in enumerate(prompt_ids):
            start = width - len(prompt)
            # Every cache is left-padded alike (the world model's just ends a column earlier);
            # prompts of one token leave the world model's cache empty (no layer filled).
            kv = {
                name: row_kv(cache, row, start, None)
                if cache.get_seq_length()
                else empty_kv(self.model, hidden)
                for name, cache in caches.items()
            }
            nodes.append(
                NodeState(
                    generated=[],
                    chain=[Segment(kv, len(prompt))],
                    hidden=hidden[row, -1].clone(),
                    policy_last=None if policy is None else policy[row, -1].clone(),
                    q_last=None if q is None else q[row, -1].clone(),
                )
            )
        return nodes

    def continue_states(
        self,
        nodes: list[NodeState],
        limits: list[int],
        code: Sampler | None = None,
        token: Sampler | None = None,
        latent: bool = True,
        first_codes: list[int] | None = None,
        first_tokens: list[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Continuation]:
        """Continues every node by up to `limits[i]` tokens, all in one batch.

        Under a `Lockstep` (several searches at once) the call waits and runs in one batch with
        the other searches' calls; the result is the same.

        Args:
            nodes: the states to continue (none may be finished).
            limits: most new tokens per node (>= 1).
            code: code sampler (latent); default greedy.
            token: token sampler; default greedy.
            latent: policy + world model, or the plain backbone's tokens.
            first_codes: force each row's first code (latent).
            first_tokens: force each row's first token (the branch token of token-level search).
            generator: random generator for sampling; the rows draw from it one after another.
        """
        if any(n.finished for n in nodes):
            raise ValueError("A finished text cannot be continued.")
        if min(limits) < 1:
            raise ValueError(f"Every continuation needs a limit >= 1, got {limits}.")
        code, token = code or Sampler(greedy=True), token or Sampler(greedy=True)
        request = ContinueRequest(
            self, nodes, limits, code, token, latent, first_codes, first_tokens, generator
        )
        if self.lockstep is not None:
            return self.lockstep.submit(request)
        return continue_together([request])[0]

    @torch.no_grad()  # not inference_mode: FSDP2 cannot gather parameters inside it
    def candidate_tokens(self, node: NodeState, codes: list[int]) -> list[int]:
        """The greedy token of each candidate code at a node, in one batched world-model pass.

        In the inject form every candidate reads the node's world-model cache as a shared prefix.
        """
        codes_t = torch.tensor([codes], device=node.hidden.device)
        prefix = batched_cache([node], "world_model", node.length - LAG["world_model"])
        logits = self.model.candidate_logits(node.hidden[None, None], codes_t, prefix)[0]
        self.cost.world_model_evals += len(codes)
        return logits.argmax(-1).tolist()

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


@dataclass
class ContinueRequest:
    """One `TreeDecoder.continue_states` call, as data, so calls can be merged into one batch."""

    decoder: TreeDecoder
    nodes: list[NodeState]
    limits: list[int]
    code: Sampler
    token: Sampler
    latent: bool
    first_codes: list[int] | None
    first_tokens: list[int] | None
    generator: torch.Generator | None

    def batch_key(self) -> tuple:
        """Requests with equal keys can run as one batch: one model, samplers, mode, forcing."""
        forcing = (self.first_codes is None, self.first_tokens is None, self.generator is None)
        return (id(self.decoder.model), repr(self.code), repr(self.token), self.latent, forcing)


def continue_requests(requests: list[ContinueRequest]) -> list[list[Continuation]]:
    """Each request's continuations, running the requests that can share a batch as one."""
    groups: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.batch_key(), []).append(index)
    results: list[list[Continuation]] = [[] for _ in requests]
    for indices in groups.values():
        merged = continue_together([requests[i] for i in indices])
        for index, continuations in zip(indices, merged, strict=True):
            results[index] = continuations
    return results


@torch.no_grad()  # not inference_mode: FSDP2 cannot gather parameters inside it
def continue_together(requests: list[ContinueRequest]) -> list[list[Continuation]]:
    """Continues the nodes of requests with one batch key as one batch.

    Each request's decoder is charged what its rows would have cost alone: its world-model
    evaluations, and a backbone position per row for every step its own call would have run
    (until its rows all end), so the cost fields do not depend on what shared the batch.
    """
    first = requests[0]
    nodes = [node for r in requests for node in r.nodes]
    generators = (
        None if first.generator is None else [r.generator for r in requests for _ in r.nodes]
    )
    config = first.decoder.config(first.code, first.token)
    state = _ForkableState(first.decoder, nodes, config, first.latent, generators)
    device = state.hidden.device
    limit = torch.tensor([n for r in requests for n in r.limits], device=device)
    spans, start = [], 0
    for r in requests:
        spans.append(slice(start, start + len(r.nodes)))
        start += len(r.nodes)
    active = [True] * len(requests)
    for step in range(int(limit.max())):
        forced = None
        if step == 0 and first.first_codes is not None:
            forced = torch.tensor([c for r in requests for c in r.first_codes], device=device)
        if step == 0 and first.first_tokens is not None:
            tokens = torch.tensor([t for r in requests for t in r.first_tokens], device=device)
            state.config.token = _ForcedChoice(first.token, tokens)
        state.advance(forced)
        state.config.token = first.token
        stopped = state.done.clone()
        state.done |= state.lengths >= limit
        for index, (request, span) in enumerate(zip(requests, spans, strict=True)):
            if first.latent:
                request.decoder.cost.world_model_evals += int(state.live[span].sum())
            active[index] &= not bool(stopped[span].all())
        # feed the last tokens unless every row has ended its text (nothing to continue)
        if bool(stopped.all()):
            break
        state.feed_last_token()
        for index, (request, span) in enumerate(zip(requests, spans, strict=True)):
            if active[index]:
                request.decoder.cost.backbone_tokens += len(request.nodes)
                active[index] = not bool(state.done[span].all())
        if bool(state.done.all()):
            break
    return [
        [
            _continuation(state, row, node)
            for row, node in zip(range(span.start, span.stop), r.nodes, strict=True)
        ]
        for r, span in zip(requests, spans, strict=True)
    ]


def _continuation(state: _ForkableState, row: int, node: NodeState) -> Continuation:
    """Row `row` of a finished batch: what it generated, and the child state it reached."""
    n = int(state.lengths[row])
    tokens = [int(t[row]) for t in state.tokens[:n]]
    finished = state.finish[row] in ("eos", "stop")
    child = NodeState(
        generated=node.generated + tokens,
        chain=node.chain if finished else node.chain + [state.segment(row, state.width, n)],
        hidden=state.snapshot["hidden"][row].clone(),
        policy_last=state.snapshot.get("policy_last", [None] * (row + 1))[row],
        q_last=state.snapshot.get("q_last", [None] * (row + 1))[row],
        finished=finished,
    )
    return Continuation(
        tokens=tokens,
        codes=[int(c[row]) for c in state.codes[:n]],
        code_logprobs=[float(c[row]) for c in state.code_logprobs[:n]],
        token_logprobs=[float(t[row]) for t in state.token_logprobs[:n]],
        finish=state.finish[row],
        state=child,
        q_taken=float(state.q_taken[row]) if state.q_model is not None else None,
    )
