"""The tree searches: MCTS-Q (the reference's, DESIGN.md section 6), plain MCTS, token MCTS.

Each takes a `Searcher` (model calls, scoring, costs) and the root node, whose state holds the
prefilled prompt; each returns a `SearchResult`.
"""

from __future__ import annotations

import math

import torch

from cola_lightning.rollout.sampling import Sampler
from cola_lightning.search import tree
from cola_lightning.search.searcher import Searcher, SearchResult
from cola_lightning.search.tree import Node


def mcts_q(searcher: Searcher, root: Node) -> SearchResult:
    """MCTS-Q: selection over the whole tree, one child per expansion, greedy simulation."""
    config, cost = searcher.config, searcher.decoder.cost
    searcher.simulate([root])
    tree.backup_q(root, config.gamma)
    for _ in range(config.rounds):
        node = tree.select_over_tree(
            root, config.c_puct, config.root_breadth, config.breadth, config.max_tries
        )
        if node is None:
            break
        cost.rounds += 1
        child = expand_q(searcher, node)
        if child is None:
            continue  # every try repeated a sibling's text: the node is used up
        searcher.simulate([child])
        tree.backup_q(child, config.gamma)
        if child.finished and config.stop_on_eos:
            break
    searcher.rescore(root)
    tree.revalue_q(root, config.gamma)
    chosen, use_rollout = tree.choose_answer_q(root, config.gamma)
    tokens = chosen.rollout_tokens if use_rollout else searcher.finish_answer(chosen)
    return searcher.result(root, tokens, chosen.reward)


def expand_q(searcher: Searcher, node: Node) -> Node | None:
    """Adds one child: the most probable untried code whose greedy token is new at this node.

    The candidates' tokens come from one batched world-model pass; the chosen code is applied,
    Q(s, a) and max_a' Q(s', a') give the uncertainty u, and a confident edge (u below the
    threshold) is extended greedily by `greedy_extension` tokens.
    """
    config, decoder, state = searcher.config, searcher.decoder, node.state
    probs = torch.softmax(state.policy_last.float(), -1)
    order = [c for c in probs.argsort(descending=True).tolist() if c not in node.tried]
    candidates = order[: config.max_tries - node.tries]
    if not candidates:  # every code tried (K < max_tries): the node is used up
        node.tries = config.max_tries
        return None
    seen = {c.state.generated[len(state.generated)] for c in node.children}
    chosen = None
    for code, token in zip(candidates, decoder.candidate_tokens(state, candidates), strict=True):
        node.tries += 1
        node.tried.add(code)
        if token not in seen:
            chosen = code
            break
    if chosen is None:
        return None
    (first,) = decoder.continue_states([state], [1], first_codes=[chosen])
    q_sa = float(state.q_last[chosen])
    uncertainty = (q_sa - config.gamma * float(first.state.q_last.max())) ** 2
    tokens, codes, logprobs, last = first.tokens, first.codes, first.code_logprobs, first
    room = config.depth - node.depth - 1
    if uncertainty < config.uncertainty_threshold and not first.state.finished and room > 0:
        (last,) = decoder.continue_states([first.state], [min(config.greedy_extension, room)])
        tokens, codes = tokens + last.tokens, codes + last.codes
        logprobs = logprobs + last.code_logprobs
    last.tokens, last.codes, last.code_logprobs = tokens, codes, logprobs
    prior = sum(math.exp(lp) for lp in logprobs) / len(logprobs)
    return searcher.child(node, last, label=chosen, prior=prior)


def mcts(searcher: Searcher, root: Node) -> SearchResult:
    """Plain MCTS over latent actions: root-to-leaf PUCT, b sampled-policy chunks per expansion."""

    def expand(leaf: Node) -> list[Node]:
        b = tree.breadth_of(leaf, searcher.config.root_breadth, searcher.config.breadth)
        conts = searcher.decoder.continue_states(
            [leaf.state] * b,
            [searcher.config.chunk_tokens] * b,
            code=Sampler(temperature=searcher.config.code_temperature),
            generator=searcher.generator,
        )
        return [
            searcher.child(
                leaf, c, c.codes[0], sum(math.exp(x) for x in c.code_logprobs) / len(c.codes)
            )
            for c in conts
        ]

    return _root_to_leaf(searcher, root, expand, sampled_rollouts=False)


def mcts_token(searcher: Searcher, root: Node) -> SearchResult:
    """Token MCTS on the plain backbone: branch on the top-b tokens, rollouts at temperature 0.5."""

    def expand(leaf: Node) -> list[Node]:
        b = tree.breadth_of(leaf, searcher.config.root_breadth, searcher.config.breadth)
        with torch.no_grad():  # not inference_mode: FSDP2 cannot gather inside it
            logits = searcher.model.token_logits(leaf.state.hidden[None, None])[0, 0]
        probs = torch.softmax(logits.float(), -1)
        top = probs.topk(b).indices.tolist()
        conts = searcher.decoder.continue_states(
            [leaf.state] * b, [searcher.config.chunk_tokens] * b, latent=False, first_tokens=top
        )
        return [
            searcher.child(leaf, c, t, float(probs[t])) for c, t in zip(conts, top, strict=True)
        ]

    return _root_to_leaf(searcher, root, expand, sampled_rollouts=True)


def _root_to_leaf(searcher: Searcher, root: Node, expand, sampled_rollouts: bool) -> SearchResult:
    """The loop of plain and token MCTS: select a leaf, expand it, simulate and back up each child.

    A node is terminal at the end of its text, at depth D or after `max_chunks` chunks; selecting
    a terminal leaf backs up its reward again. The answer is the best-scored rollout.
    """
    config, cost = searcher.config, searcher.decoder.cost
    searcher.simulate([root], sampled=sampled_rollouts)
    tree.backup_mean(root, root.reward)
    for _ in range(config.rounds):
        leaf = tree.select_root_to_leaf(root, config.c_puct)
        cost.rounds += 1
        if leaf.terminal:
            tree.backup_mean(leaf, leaf.reward)
            continue
        children = expand(leaf)
        for child in children:
            child.terminal |= _level(child) >= config.max_chunks
        searcher.simulate(children, sampled=sampled_rollouts)
        for child in children:
            tree.backup_mean(child, child.reward)
    searcher.rescore(root)
    best = tree.best_rollout(root)
    return searcher.result(root, best.rollout_tokens, best.reward)


def _level(node: Node) -> int:
    return sum(1 for _ in node.path_to_root()) - 1
