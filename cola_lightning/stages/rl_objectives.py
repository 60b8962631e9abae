"""The RL objectives shared by latent-action and token-level RL: advantages, clipped loss, KL.

All tensors are per action: log-probabilities (N, L) with a mask (N, L) of the positions where an
action (a code, or a token) was taken; rewards and advantages are per sequence (N,).
"""

from __future__ import annotations

import torch

ALGORITHMS = ("grpo", "remax", "ppo")


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each reward minus its group's mean, over the group's std (groups are contiguous)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}.")
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(-1, keepdim=True)
    return (centred / (groups.std(-1, keepdim=True, unbiased=False) + eps)).flatten()


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """ReMax: each sampled rollout's reward minus the reward of its prompt's greedy rollout."""
    return rewards - greedy_rewards


def batch_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Critic-free PPO: rewards normalised over the whole rollout batch."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's actions (N,), then over sequences: every sequence counts once."""
    mask = mask.to(values.dtype)
    return ((values * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, to minimise, and the fraction of actions whose ratio was clipped.

    With ratio 1 (the first pass over fresh rollouts) its gradient is the plain policy gradient,
    that of -A * log pi.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    advantage = advantages[:, None]
    unclipped = ratio * advantage
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage
    loss = -sequence_mean(torch.minimum(unclipped, clipped), mask)
    clip_frac = sequence_mean((unclipped != clipped).float().detach(), mask)
    return loss, clip_frac


def kl_to_reference(
    logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(pi || pi_ref) on the taken actions, by the non-negative k3 estimator.

    exp(ref - logp) - (ref - logp) - 1: zero exactly when the two policies agree.
    """
    delta = reference_logprobs - logprobs
    return sequence_mean(torch.exp(delta) - delta - 1, mask)
