"""The Q-model of MCTS-Q and its Double-DQN targets (DESIGN.md section 6).

Q(s_t, a) for all K codes at every position: decoder blocks of the backbone's own class over the
frozen backbone states, then Linear(d -> K, no bias). The reference uses a whole second LM for the
state; here the backbone's states are shared and only the blocks and head are the Q-model's, which
makes it cheap enough to run inside the search (its KV cache rides with the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cola_lightning.models.code_predictor import CodePredictor

Q_PREFIX = "q_model."


@dataclass
class QModelConfig:
    """Sizes of the Q-model.

    Args:
        layers: decoder blocks over the backbone states.
        gamma: the discount of the TD target (0.99 in the reference).
    """

    layers: int = 2
    gamma: float = 0.99

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"The Q-model needs at least one block, got layers={self.layers}.")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}.")


class QModel(CodePredictor):
    """Q(s_t, .) (B, T, K) from backbone states (B, T, d); same call as the policy (with cache)."""

    def __init__(self, backbone_config, config: QModelConfig, num_codes: int, dtype=torch.float32):
        super().__init__(backbone_config, config.layers, num_codes, dtype)
        # Q starts at 0 everywhere: rewards are 0/1, and a random head would inject noise into u.
        nn.init.zeros_(self.head.weight)

    @property
    def num_codes(self) -> int:
        return self.head.out_features


def td_targets(
    q_online_next: torch.Tensor,
    q_target_next: torch.Tensor,
    rewards: torch.Tensor,
    last: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """Double-DQN targets r_t + gamma * Q_target(s_{t+1}, argmax_a Q(s_{t+1}, a)).

    Args:
        q_online_next: Q(s_{t+1}, .) of the online network (B, T, K), chooses the action.
        q_target_next: Q_target(s_{t+1}, .) of the target network (B, T, K), values it.
        rewards: r_t (B, T); the reference puts the sequence reward at the last response token.
        last: True where step t is the last response step (B, T): no bootstrap past it.
        gamma: discount.
    """
    best = q_online_next.argmax(-1, keepdim=True)
    bootstrap = q_target_next.gather(-1, best)[..., 0]
    return rewards + gamma * bootstrap * (~last).to(bootstrap.dtype)


def q_state_dict(checkpoint_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The online Q-model's tensors of a Q-learning checkpoint, prefix removed."""
    return {k[len(Q_PREFIX) :]: v for k, v in checkpoint_state.items() if k.startswith(Q_PREFIX)}


def load_q_model(path: str, backbone_config, config: QModelConfig, num_codes: int) -> QModel:
    """A Q-model from a `QLearningModule` checkpoint; its K must be the CoLA model's."""
    from cola_lightning.checkpoints.format import check_state_keys, read_checkpoint

    state = q_state_dict(read_checkpoint(path)["state_dict"])
    if not state:
        raise KeyError(f"{path} holds no Q-model tensors ({Q_PREFIX}*): is it a Q-learning run?")
    if "head.weight" not in state:
        raise KeyError(
            f"{path} has no {Q_PREFIX}head.weight: the Q-model in it is incomplete. Point "
            "`q_from` at a checkpoint saved by a Q-learning run (QLearningModule)."
        )
    k = state["head.weight"].shape[0]
    if k != num_codes:
        raise ValueError(
            f"The Q-model in {path} scores {k} codes but the CoLA model has K={num_codes}: train "
            "the Q-model on solutions from this CoLA checkpoint (same num_codes)."
        )
    model = QModel(backbone_config, config, num_codes, state["head.weight"].dtype)
    check_state_keys(set(model.state_dict()), set(state), set(), path)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
