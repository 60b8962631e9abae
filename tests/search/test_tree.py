"""Selection, backup and answer selection on small hand-built trees: exact values."""

import math

import pytest

from cola_lightning.search import tree
from cola_lightning.search.tree import Node


def node(reward=None, prior=1.0, terminal=False, visits=0, value=0.0) -> Node:
    return Node(None, prior=prior, terminal=terminal, reward=reward, visits=visits, value=value)


def test_puct_and_selection_over_the_whole_tree():
    root = node(reward=0.2, visits=4, value=0.3)
    a = root.add(node(reward=0.5, prior=0.6, visits=2, value=0.5))
    b = root.add(node(reward=0.1, prior=0.4, visits=1, value=0.1))
    deep = a.add(node(reward=0.9, prior=0.9, visits=1, value=0.9))
    assert tree.puct(a, 0.7) == pytest.approx(0.5 + 0.7 * 0.6 * math.sqrt(4) / 3)
    assert tree.puct(root, 0.7) == pytest.approx(0.3 + 0.7 * 1.0 * math.sqrt(4) / 5)
    assert tree.puct(deep, 0.7) == pytest.approx(0.9 + 0.7 * 0.9 * math.sqrt(2) / 2)
    # root has 2 of 2 children (full); a has 1 of 2; the deep leaf scores highest
    assert tree.select_over_tree(root, 0.7, 2, 2, 10) is deep
    deep.terminal = True
    assert tree.select_over_tree(root, 0.7, 2, 2, 10) is a
    a.tries = 10  # out of tries
    assert tree.select_over_tree(root, 0.7, 2, 2, 10) is b
    b.terminal = True
    assert tree.select_over_tree(root, 0.7, 2, 2, 10) is None
    # the root takes b1 children, every other node b2
    assert tree.select_over_tree(root, 0.7, 3, 2, 10) is root


def test_q_backup_exact_values():
    gamma = 0.99
    root = node(reward=0.2)
    tree.backup_q(root, gamma)
    assert (root.visits, root.value) == (1, 0.2)  # a leaf's V is its R
    c1 = root.add(node(reward=1.0))
    tree.backup_q(c1, gamma)
    assert (c1.visits, c1.value) == (1, 1.0)
    assert root.visits == 2
    assert root.value == pytest.approx((1.0 - 0.2) + gamma * 1.0)
    c2 = root.add(node(reward=0.0))
    tree.backup_q(c2, gamma)
    assert root.value == pytest.approx((1.79 + (0.0 - 0.2)) / 2)
    g = c2.add(node(reward=0.5))
    tree.backup_q(g, gamma)
    assert c2.value == pytest.approx(0.5 + gamma * 0.5)  # q(g) = (0.5 - 0) + gamma * 0.5
    q1, q2 = 1.79, (0.0 - 0.2) + gamma * c2.value
    assert root.value == pytest.approx((1 * q1 + 2 * q2) / 3)  # visit-weighted
    assert (root.visits, c2.visits, c1.visits) == (4, 2, 1)


def test_revalue_keeps_backed_up_values_and_follows_rescored_rewards():
    gamma = 0.99
    root = node(reward=0.2)
    tree.backup_q(root, gamma)
    c1, c2 = root.add(node(reward=1.0)), root.add(node(reward=0.0))
    tree.backup_q(c1, gamma)
    tree.backup_q(c2, gamma)
    g = c2.add(node(reward=0.5))
    tree.backup_q(g, gamma)
    backed_up = [n.value for n in root.walk()]
    tree.revalue_q(root, gamma)
    assert [n.value for n in root.walk()] == backed_up  # exactly: same operations
    g.reward = 1.0  # re-scored: every V on its path follows
    tree.revalue_q(root, gamma)
    assert g.value == 1.0 and c2.value == pytest.approx(1.0 + gamma * 1.0)
    q1, q2 = (1.0 - 0.2) + gamma * 1.0, (0.0 - 0.2) + gamma * c2.value
    assert root.value == pytest.approx((q1 + 2 * q2) / 3)
    assert c1.value == 1.0 and [n.visits for n in root.walk()] == [4, 1, 2, 1]


def test_answer_rule_terminal_beats_best_rollout_only_if_its_q_is_higher():
    gamma = 0.99
    root = node(reward=0.1)
    t = root.add(node(reward=0.6, terminal=True, value=0.6))  # q = 0.5 + 0.594 = 1.094
    r = root.add(node(reward=0.9, value=0.9))
    chosen, rollout = tree.choose_answer_q(root, gamma)
    assert chosen is t and not rollout
    t.reward, t.value = 0.2, 0.2  # q = 0.1 + 0.198 = 0.298 < best R 0.9
    chosen, rollout = tree.choose_answer_q(root, gamma)
    assert chosen is r and rollout
    assert tree.edge_q(t, gamma) == pytest.approx(0.298)


def test_plain_mcts_selection_and_mean_backup():
    root = node(reward=0.0)
    tree.backup_mean(root, 0.0)
    # each node's simulation score is its reward R; backup_mean only moves N and V
    a, b = root.add(node(prior=0.5, reward=1.0)), root.add(node(prior=0.5, reward=0.0))
    tree.backup_mean(a, 1.0)
    tree.backup_mean(b, 0.0)
    assert (root.visits, root.value) == (3, pytest.approx(1 / 3))
    assert tree.select_root_to_leaf(root, 0.7) is a
    leaf = a.add(node(prior=1.0, reward=0.0))
    tree.backup_mean(leaf, 0.0)
    assert a.value == pytest.approx(0.5) and root.value == pytest.approx(0.25)
    assert tree.best_rollout(root) is a
