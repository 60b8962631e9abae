"""Search-tree nodes and the tree arithmetic of MCTS-Q and plain MCTS (DESIGN.md section 6).

Pure bookkeeping, no model: selection scores, backups and the answer rule work on any hand-built
tree, which is how the tests check them against exact values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cola_lightning.search.state import NodeState


@dataclass
class Node:
    """A text in the tree; its edge from the parent is labelled by its first code (or token).

    Args:
        state: the caches to continue the text (None once it is not needed).
        parent: None at the root.
        label: the edge's first code (latent) or branch token (token-level).
        prior: p(n), the mean policy probability of the codes along the edge (1 at the root).
        depth: tokens generated from the root to the end of this node's edge.
        terminal: the text ended (EOS / stop) or reached the depth limit.
        finished: the text ended (EOS / stop), as opposed to running out of depth.
        reward: R, the score of this node's simulation.
        rollout: the simulated full response text from the root (this node's text + simulation).
        q_final: the Q-model's value of the rollout's last step, Q(s_T, a_T) (with a Q-model).
    """

    state: NodeState | None
    parent: Node | None = None
    label: int | None = None
    prior: float = 1.0
    depth: int = 0
    terminal: bool = False
    finished: bool = False
    reward: float | None = None
    rollout: str = ""
    rollout_tokens: list[int] = field(default_factory=list)
    q_final: float | None = None
    visits: int = 0
    value: float = 0.0
    tries: int = 0
    children: list[Node] = field(default_factory=list)
    tried: set[int] = field(default_factory=set)

    def add(self, child: Node) -> Node:
        child.parent = self
        self.children.append(child)
        return child

    def walk(self):
        """This node and every descendant, breadth-first."""
        queue = [self]
        while queue:
            node = queue.pop(0)
            yield node
            queue.extend(node.children)

    def path_to_root(self):
        node = self
        while node is not None:
            yield node
            node = node.parent


def puct(node: Node, c_puct: float) -> float:
    """V(n) + c_puct * p(n) * sqrt(N(parent)) / (N(n) + 1); the root uses its own N."""
    parent_visits = node.parent.visits if node.parent is not None else node.visits
    return node.value + c_puct * node.prior * math.sqrt(parent_visits) / (node.visits + 1)


def breadth_of(node: Node, root_breadth: int, breadth: int) -> int:
    return root_breadth if node.parent is None else breadth


def expandable(node: Node, root_breadth: int, breadth: int, max_tries: int) -> bool:
    """Not terminal, fewer than b children, and tries left."""
    full = len(node.children) >= breadth_of(node, root_breadth, breadth)
    return not node.terminal and not full and node.tries < max_tries


def select_over_tree(
    root: Node, c_puct: float, root_breadth: int, breadth: int, max_tries: int
) -> Node | None:
    """MCTS-Q selection: the expandable node (whole tree, breadth-first) with the best PUCT.

    Ties go to the first in breadth-first order. None when nothing can be expanded.
    """
    best, best_score = None, -math.inf
    for node in root.walk():
        if expandable(node, root_breadth, breadth, max_tries):
            score = puct(node, c_puct)
            if score > best_score:
                best, best_score = node, score
    return best


def edge_q(child: Node, gamma: float) -> float:
    """q(c) = (R_c - R_parent) + gamma * V_c."""
    return (child.reward - child.parent.reward) + gamma * child.value


def backup_q(leaf: Node, gamma: float) -> None:
    """MCTS-Q backup to the root: N += 1; V = visit-weighted mean of q over children; leaf V = R."""
    for node in leaf.path_to_root():
        node.visits += 1
        node.value = value_q(node, gamma)


def value_q(node: Node, gamma: float) -> float:
    """V: the visit-weighted mean of q over the visited children, or R without any."""
    visited = [c for c in node.children if c.visits > 0]
    if not visited:
        return node.reward
    total = sum(c.visits for c in visited)
    return sum(c.visits * edge_q(c, gamma) for c in visited) / total


def revalue_q(node: Node, gamma: float) -> None:
    """Recomputes every V below `node` from the current rewards (visits kept), bottom-up.

    After the last backup each V is `value_q` of its node (a child's V only changes in a backup
    that passes through its parent), so this leaves unchanged rewards' values as they are and
    makes them consistent with re-scored ones.
    """
    if node.visits == 0:
        return
    for child in node.children:
        revalue_q(child, gamma)
    node.value = value_q(node, gamma)


def choose_answer_q(root: Node, gamma: float) -> tuple[Node, bool]:
    """The MCTS-Q answer: (node, use_its_rollout).

    Each child's V is overwritten with its parent's q for that edge; the terminal node with the
    highest V is taken if that V beats the best rollout reward in the tree, else the node whose
    rollout has the highest R (ties: the first breadth-first).
    """
    nodes = list(root.walk())
    scored = [n for n in nodes if n.reward is not None]
    best_rollout = max(scored, key=lambda n: n.reward)
    terminals = [n for n in nodes if n.terminal and n.parent is not None and n.reward is not None]
    if terminals:
        values = [edge_q(n, gamma) for n in terminals]
        index = max(range(len(terminals)), key=values.__getitem__)
        if values[index] > best_rollout.reward:
            return terminals[index], False
    return best_rollout, True


def select_root_to_leaf(root: Node, c_puct: float) -> Node:
    """Plain MCTS selection: from the root, the child with the best PUCT until a leaf."""
    node = root
    while node.children:
        node = max(node.children, key=lambda c: puct(c, c_puct))
    return node


def backup_mean(leaf: Node, reward: float) -> None:
    """Plain MCTS backup: N += 1 and V = running mean of the rewards through each node."""
    for node in leaf.path_to_root():
        node.visits += 1
        node.value += (reward - node.value) / node.visits


def best_rollout(root: Node) -> Node:
    """The node whose simulation scored highest (ties: the first breadth-first)."""
    return max((n for n in root.walk() if n.reward is not None), key=lambda n: n.reward)
