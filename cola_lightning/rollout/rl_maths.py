"""The maths of RL over actions, in one place: batches, log-probs, masked means, advantages, losses.

Shared by the generation engine (left padding, position ids, log-probs at a temperature), the
uncached reference generator, and the RL stages (action batches, advantages, the clipped loss and
the KL). Actions are codes (latent RL) or tokens (token RL); per-action tensors are (N, L) with a
mask of the positions that took an action, per-sequence ones (rewards) are (N,).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

ALGORITHMS = ("grpo", "remax", "ppo", "ppo_gae")
TERMINAL_REWARD_CLIP = 10.0  # the reference PPO clips the sequence reward to [-10, 10]


# -- sequences -----------------------------------------------------------------------------------


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, P) padded on the left, and the attention mask."""
    if any(len(s) == 0 for s in sequences):
        raise ValueError("Every prompt needs at least one token.")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence) :] = torch.tensor(sequence)
        mask[row, width - len(sequence) :] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (left padding gets position 0)."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


def logprobs_at_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) in float32 (..., N)."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def action_logprobs(
    logits: torch.Tensor, actions: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of `actions` and the entropy, at every position, at `temperature`."""
    logprobs = logprobs_at_temperature(logits, temperature)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logprobs.gather(-1, actions[..., None])[..., 0], entropy


@dataclass
class ActionBatch:
    """Rollouts as full sequences, with the action taken at each position that took one."""

    input_ids: torch.Tensor  # (N, L), left-padded prompt + response
    attention_mask: torch.Tensor  # (N, L)
    position_ids: torch.Tensor  # (N, L)
    actions: torch.Tensor  # (N, L) code or token chosen at that position (0 elsewhere)
    action_mask: torch.Tensor  # (N, L) bool
    old_logprobs: torch.Tensor  # (N, L) log-prob of the action when it was sampled
    states: torch.Tensor | None = None  # (N, L, d) the frozen backbone's states, when known

    def action_columns(self) -> slice:
        """The columns holding every action: responses sit at the right of a left-padded batch,
        so reading logits there alone skips the prompt's positions (a 49k-way head each)."""
        columns = torch.nonzero(self.action_mask.any(0)).flatten()
        if columns.numel() == 0:
            return slice(0, 0)
        return slice(int(columns[0]), int(columns[-1]) + 1)

    def widen(self, values: torch.Tensor, columns: slice) -> torch.Tensor:
        """Per-action values (N, C) read at `columns`, back at full width (N, L), zeros around."""
        width = self.action_mask.shape[1]
        return torch.nn.functional.pad(values, (columns.start, width - columns.stop))

    def select(self, rows: torch.Tensor) -> ActionBatch:
        fields = (getattr(self, f.name) for f in dataclasses.fields(self))
        return ActionBatch(*(None if t is None else t[rows] for t in fields))


def action_batch(rollout, latent: bool, pad_id: int, device) -> ActionBatch:
    """Aligns a `Rollout`'s actions with positions: the action at position p made token p + 1.

    The rollout's backbone states, when it kept them, are aligned the same way; the last
    position, which takes no action and which the rollout never fed back, gets zeros (the policy
    is causal, so no action reads it).
    """
    sequences = [p + t for p, t in zip(rollout.prompt_ids, rollout.token_ids, strict=True)]
    ids, mask = left_pad(sequences, pad_id)
    actions = torch.zeros_like(ids)
    old = torch.zeros(ids.shape, dtype=torch.float32)
    taken = torch.zeros(ids.shape, dtype=torch.bool)
    chosen = rollout.codes if latent else rollout.token_ids
    logprobs = rollout.code_logprobs if latent else rollout.token_logprobs
    width = ids.shape[1]
    for row, (acts, lps) in enumerate(zip(chosen, logprobs, strict=True)):
        start = width - len(acts) - 1
        actions[row, start : width - 1] = torch.tensor(acts, dtype=torch.long)
        old[row, start : width - 1] = torch.tensor(lps, dtype=torch.float32)
        taken[row, start : width - 1] = True
    tensors = (ids, mask, position_ids(mask), actions, taken, old)
    batch = ActionBatch(*(t.to(device) for t in tensors))
    if rollout.states is not None:
        batch.states = aligned_states(rollout.states, width, device)
    return batch


def aligned_states(states: list[torch.Tensor], width: int, device) -> torch.Tensor:
    """Per-sequence states (n_i - 1, d) placed left-padded in (N, width, d), zeros elsewhere."""
    out = states[0].new_zeros(len(states), width, states[0].shape[-1], device=device)
    for row, rows in enumerate(states):
        out[row, width - len(rows) - 1 : width - 1] = rows
    return out


# -- masked means --------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is true."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's actions (N,), then over sequences: every sequence counts once."""
    mask = mask.to(values.dtype)
    return ((values * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()


# -- advantages ----------------------------------------------------------------------------------


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


def shaped_rewards(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """The reference PPO's per-action rewards (N, L): -beta * KL_t, plus the sequence reward.

    KL_t = log pi(a_t) - log pi_ref(a_t) on the taken action; the sequence reward, clipped to
    [-10, 10], is added at each sequence's last action.
    """
    per_action = -kl_coef * (logprobs - reference_logprobs) * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(-1)  # the last masked position of each row
    terminal = rewards.clamp(-TERMINAL_REWARD_CLIP, TERMINAL_REWARD_CLIP).to(per_action.dtype)
    return per_action.index_put((torch.arange(len(last), device=mask.device), last), terminal, True)


def gae_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> torch.Tensor:
    """GAE with V = 0 (the reference PPO has no critic): A_t = sum_k (gamma lam)^k r_{t+k}.

    `rewards` (N, L) are per action; the sum runs over later actions of the same row only.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    mask = mask.to(rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / std over the masked entries of the whole buffer; 0 elsewhere."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(variance + eps) * mask.to(values.dtype)


def ppo_gae_advantages(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    lam: float = 0.95,
) -> torch.Tensor:
    """The reference PPO's per-action advantages (N, L): shaped rewards, GAE (V = 0, gamma 1,
    lambda 0.95), whitened over the rollout buffer."""
    shaped = shaped_rewards(rewards, logprobs, reference_logprobs, mask, kl_coef)
    return whiten(gae_advantages(shaped, mask, 1.0, lam), mask)


# -- losses --------------------------------------------------------------------------------------


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, to minimise, and the fraction of actions that took its clipped
    branch (where the clipped term is the smaller one, so its gradient is zero).

    `advantages` are per sequence (N,) or per action (N, L). With ratio 1 (the first pass over
    fresh rollouts) the gradient is the plain policy gradient, that of -A * log pi.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    advantage = advantages[:, None] if advantages.dim() == 1 else advantages
    unclipped = ratio * advantage
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage
    loss = -sequence_mean(torch.minimum(unclipped, clipped), mask)
    clip_frac = sequence_mean((clipped < unclipped).float().detach(), mask)
    return loss, clip_frac


def kl_to_reference(
    logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(pi || pi_ref) on the taken actions, by the non-negative k3 estimator.

    exp(ref - logp) - (ref - logp) - 1: zero exactly when the two policies agree.
    """
    delta = reference_logprobs - logprobs
    return sequence_mean(torch.exp(delta) - delta - 1, mask)
