"""One interface over every test-time search: `Searcher.search(prompt, record) -> SearchResult`.

The search-free baselines (greedy, best-of-N) live here; the tree searches in `mcts.py`. Every
method spends its compute through one `TreeDecoder`, so the cost fields are comparable.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from functools import partial

import torch

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.search.config import SearchConfig
from cola_lightning.search.lockstep import Lockstep
from cola_lightning.search.scorers import Scorer
from cola_lightning.search.state import (
    Continuation,
    SearchCost,
    TreeDecoder,
    continue_requests,
)
from cola_lightning.search.tree import Node


@dataclass
class SearchResult:
    """The chosen response, its score, the cost, and the tree (None for search-free methods)."""

    response: str
    tokens: list[int]
    score: float
    cost: SearchCost
    tree: Node | None = None
    rollouts: list[str] = field(default_factory=list)


class Searcher:
    """Runs the configured search for one problem (`search`) or several at once (`search_many`).

    Args:
        model: the CoLA model.
        tokenizer: its tokenizer.
        config: the method and its budget.
        scorer: what scores a simulation.
        q_model: the Q-model (MCTS-Q needs it; the ``q_value`` scorer too).
        stop_strings: texts that end a response besides EOS.
    """

    def __init__(
        self,
        model: CoLAModel,
        tokenizer,
        config: SearchConfig,
        scorer: Scorer,
        q_model: torch.nn.Module | None = None,
        stop_strings: list[str] | None = None,
    ) -> None:
        config.check_codes(model.num_codes)
        if config.method == "mcts_q" and q_model is None:
            raise ValueError("mcts_q needs a Q-model: set `q_from` to a Q-learning checkpoint.")
        if q_model is not None and q_model.num_codes != model.num_codes:
            raise ValueError(
                f"The Q-model scores {q_model.num_codes} codes but the CoLA model has "
                f"K={model.num_codes}: train the Q-model on this CoLA checkpoint's solutions."
            )
        if scorer.config.kind == "q_value" and (q_model is None or not config.latent):
            raise ValueError("The q_value scorer needs a Q-model (`q_from`) and a latent method.")
        self.model, self.tokenizer, self.config, self.scorer = model, tokenizer, config, scorer
        self.q_model = q_model if config.latent else None
        self.stop_strings = list(stop_strings or [])

    def search(
        self,
        prompt: str,
        record: dict,
        generator: torch.Generator | None = None,
        lockstep: Lockstep | None = None,
    ) -> SearchResult:
        """Searches for a response to `prompt`; `record` holds the task fields (gold answer).

        `lockstep` batches this search's decodes with other searches' (`search_many`).
        """
        from cola_lightning.search import mcts

        started = time.perf_counter()
        self.decoder = TreeDecoder(
            self.model, self.tokenizer, self.q_model, self.stop_strings, True, lockstep=lockstep
        )
        self.prompt, self.record, self.generator, self.history = prompt, record, generator, []
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        root = Node(self.decoder.roots([prompt_ids], self.config.latent)[0])
        method = self.config.method
        if method in ("greedy", "greedy_token", "best_of_n_latent", "best_of_n_token"):
            result = self._sample(root)
        else:
            result = {"mcts_q": mcts.mcts_q, "mcts": mcts.mcts, "mcts_token": mcts.mcts_token}[
                method
            ](self, root)
        result.cost.wall_s = time.perf_counter() - started
        result.rollouts = list(self.history)
        return result

    def search_many(
        self,
        prompts: list[str],
        records: list[dict],
        generators: list[torch.Generator | None] | None = None,
    ) -> list[SearchResult]:
        """One search per prompt, all at once: their decodes run as shared batches.

        Each result equals that of `search` alone with the same generator (the batch changes
        only the padding), cost fields included; `wall_s` is the batch's wall time divided
        evenly among its problems.
        """
        generators = generators or [None] * len(prompts)
        if not len(prompts) == len(records) == len(generators):
            raise ValueError(
                f"search_many needs one record and one generator per prompt: got {len(prompts)} "
                f"prompts, {len(records)} records, {len(generators)} generators."
            )
        started = time.perf_counter()
        lockstep = Lockstep(continue_requests)
        jobs = [
            partial(copy.copy(self).search, prompt, record, generator, lockstep)
            for prompt, record, generator in zip(prompts, records, generators, strict=True)
        ]
        results = lockstep.run(jobs)
        for result in results:
            result.cost.wall_s = (time.perf_counter() - started) / len(results)
        return results

    # -- shared pieces ---------------------------------------------------------------------------

    def simulate(self, nodes: list[Node], sampled: bool = False) -> None:
        """Continues each node to the end of its text, scores the rollouts, stores R and rollout.

        Greedy by default; `sampled` uses the token temperature (token MCTS's rollouts).
        """
        open_nodes = [n for n in nodes if not n.finished]
        continuations = {}
        if open_nodes:
            token = Sampler(temperature=self.config.token_temperature) if sampled else None
            conts = self.decoder.continue_states(
                [n.state for n in open_nodes],
                [self.config.simulation_tokens] * len(open_nodes),
                token=token,
                latent=self.config.latent,
                generator=self.generator,
            )
            continuations = dict(zip(map(id, open_nodes), conts, strict=True))
        for node in nodes:
            cont = continuations.get(id(node))
            node.rollout_tokens = node.state.generated + (cont.tokens if cont else [])
            node.rollout = self.decoder.text(node.rollout_tokens)
            if cont is not None:
                node.q_final = cont.q_taken
        self.score(nodes)

    def score(self, nodes: list[Node]) -> None:
        rollouts = [n.rollout for n in nodes]
        q_values = [n.q_final for n in nodes]
        rewards = self.scorer(self.prompt, rollouts, self.record, q_values, self.history)
        self.history.extend(rollouts)
        for node, reward in zip(nodes, rewards, strict=True):
            node.reward = reward

    def rescore(self, root: Node) -> None:
        """Re-scores every rollout against all of the tree's, for a scorer that reads the others.

        During the search a rollout's agreement counts only the rollouts made before it, so the
        root's (the greedy one) always scores 1.0 and no later answer can beat it; the answer is
        chosen on the agreement over the whole tree instead (a majority vote over its rollouts).
        """
        if not self.scorer.reads_history:
            return
        nodes = [n for n in root.walk() if n.reward is not None]
        rollouts = [n.rollout for n in nodes]
        rewards = self.scorer(self.prompt, rollouts, self.record, [n.q_final for n in nodes], [])
        for node, reward in zip(nodes, rewards, strict=True):
            node.reward = reward

    def result(self, root: Node, tokens: list[int], score: float) -> SearchResult:
        self.decoder.cost.nodes = sum(1 for _ in root.walk())
        return SearchResult(self.decoder.text(tokens), tokens, score, self.decoder.cost, root)

    def finish_answer(self, node: Node) -> list[int]:
        """The node's text, continued greedily when it has not ended."""
        if node.finished:
            return node.state.generated
        (cont,) = self.decoder.continue_states(
            [node.state], [self.config.answer_tokens], latent=self.config.latent
        )
        return cont.state.generated

    def child(self, parent: Node, cont: Continuation, label: int, prior: float) -> Node:
        depth = parent.depth + len(cont.tokens)
        finished = cont.state.finished
        node = Node(cont.state, label=label, prior=prior, depth=depth, finished=finished)
        node.terminal = finished or depth >= self.config.depth
        node.q_final = cont.q_taken
        return parent.add(node)

    # -- search-free baselines -------------------------------------------------------------------

    def _sample(self, root: Node) -> SearchResult:
        """Greedy (one rollout) or best-of-N (N sampled rollouts, the best-scored one)."""
        config = self.config
        greedy = config.method.startswith("greedy")
        count = 1 if greedy else config.samples
        code = Sampler(greedy=True) if greedy else Sampler(temperature=config.code_temperature)
        token = None if greedy or config.latent else Sampler(temperature=config.token_temperature)
        conts = self.decoder.continue_states(
            [root.state] * count,
            [config.simulation_tokens] * count,
            code=code,
            token=token,
            latent=config.latent,
            generator=self.generator,
        )
        nodes = [self.child(root, c, label=i, prior=1.0) for i, c in enumerate(conts)]
        for node in nodes:
            node.rollout_tokens = node.state.generated
            node.rollout = self.decoder.text(node.rollout_tokens)
        self.score(nodes)
        self.decoder.cost.rounds = 1
        best = max(nodes, key=lambda n: n.reward)
        return self.result(root, best.rollout_tokens, best.reward)
