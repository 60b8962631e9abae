"""What each latent code does, measured on a text set: the numbers behind the action atlas.

For every step t of every text (step t predicts token t + 1, `models/steps.py`):

* the code the inverse dynamics model assigns the real transition, and the policy's argmax code;
* for every code k at once (`CoLAModel.candidate_logits`): the world model's next-token
  distribution p_k, and KL(p_k || p_base) against the backbone's own distribution there. In the
  inject form the world model also reads the text before step t, with the inverse dynamics
  model's codes (as the engine reads a prompt): every step's K candidates share that prefix's
  world-model cache.

Per code, the atlas keeps how often the IDM and the policy chose it, its mean KL, the tokens it
makes most likely on average over contexts (and those it raises most above the backbone), and short
continuations forced with that code at every step from shared prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cola_lightning.models.cola import CoLAModel
from cola_lightning.models.steps import at_steps
from cola_lightning.rollout.engine import GenerationConfig, Generator
from cola_lightning.rollout.kv_cache import left_padded_cache
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.stages.losses import target_mask


@dataclass
class CodeEntry:
    """One code's page in the atlas."""

    code: int
    idm_count: int
    policy_count: int
    mean_kl: float
    top_tokens: list[tuple[str, float]]  # (token, mean probability under the code)
    lifted_tokens: list[tuple[str, float]]  # (token, mean p_code - mean p_base)
    continuations: list[str] = field(default_factory=list)


@dataclass
class Atlas:
    """The atlas of a model on a text set."""

    entries: list[CodeEntry]
    steps_seen: int  # steps counted (the IDM and policy counts each sum to this)
    steps_scored: int  # steps at which every code's distribution was scored
    prefixes: list[str]
    codebook: torch.Tensor  # (K, d): each code's embedding e_k


def _batch(tokenizer, texts: list[str], max_length: int, device) -> dict[str, torch.Tensor]:
    rows = [tokenizer(t, add_special_tokens=False).input_ids[:max_length] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


class _Accumulator:
    """Running sums over the steps of all batches."""

    def __init__(self, num_codes: int, vocab: int, device) -> None:
        self.idm = torch.zeros(num_codes, dtype=torch.long, device=device)
        self.policy = torch.zeros(num_codes, dtype=torch.long, device=device)
        self.kl = torch.zeros(num_codes, dtype=torch.float64, device=device)
        self.prob = torch.zeros(num_codes, vocab, dtype=torch.float64, device=device)
        self.base = torch.zeros(vocab, dtype=torch.float64, device=device)
        self.seen = self.scored = 0

    def score(self, model: CoLAModel, texts: _Texts, steps: torch.Tensor) -> None:
        """Adds every code's distribution at `steps` (N, 2) = (text, t), all K in one pass."""
        num_codes = self.idm.shape[0]
        row, t = steps.unbind(-1)
        states = texts.hidden[row, t]
        codes = torch.arange(num_codes, device=states.device).expand(states.shape[0], -1)
        prefix, mask = texts.prefix(row, t)
        logits = model.candidate_logits(states[:, None], codes, prefix, mask)
        log_code = torch.log_softmax(logits.float(), -1)
        log_base = torch.log_softmax(model.token_logits(texts.base[row, t]).float(), -1)
        code_prob = log_code.exp()
        self.kl += (code_prob * (log_code - log_base[:, None])).sum(-1).sum(0).double()
        self.prob += code_prob.sum(0).double()
        self.base += log_base.exp().sum(0).double()
        self.scored += states.shape[0]


class _Texts:
    """One batch of (right-padded) texts as the scoring reads it.

    `hidden`: the states the latent parts read; `base`: the plain LM's final-normed states (the
    same tensor in the merge form); `cache` (inject form; None in the merge form): the world
    model's cache over every position but the last, each with its inverse dynamics code.
    """

    def __init__(self, model: CoLAModel, batch: dict, hidden: torch.Tensor, idm: torch.Tensor):
        self.hidden, self.base, self.cache = hidden, hidden, None
        if model.inject_layer is not None:
            mask = batch["attention_mask"]
            self.base = model.token_states(batch["input_ids"], mask)[0]
            self.cache = model.world_model_cache()
            model.prefill_world_model(at_steps(hidden), idm, at_steps(mask), None, self.cache)

    def prefix(self, row: torch.Tensor, t: torch.Tensor) -> tuple:
        """The world-model cache over positions < t of each text `row`, left-padded, and its
        attention mask over the prefix and the candidate's own position; (None, None) if merge.
        """
        if self.cache is None:
            return None, None
        layers = self.cache.layers
        rows = [
            [(layer.keys[r, :, :n], layer.values[r, :, :n]) for layer in layers]
            for r, n in zip(row.tolist(), t.tolist(), strict=True)
        ]
        width = int(t.max())
        mask = torch.arange(width + 1, device=t.device) >= (width - t)[:, None]
        return left_padded_cache(rows, width), mask.long()


@torch.inference_mode()
def build_atlas(
    model: CoLAModel,
    tokenizer,
    texts: list[str],
    max_length: int = 128,
    batch_size: int = 8,
    max_scored_steps: int = 512,
    score_chunk: int = 8,
    top: int = 8,
    prefixes: list[str] | None = None,
    continuation_tokens: int = 12,
) -> Atlas:
    """Measures every code of `model` on `texts`.

    Args:
        model: a CoLA model with a trained IDM and policy (stage 1b or later).
        tokenizer: its tokenizer.
        texts: the text set; each is cut to `max_length` tokens.
        max_length: tokens per text.
        batch_size: texts per forward pass.
        max_scored_steps: steps at which all K distributions are scored (the costly part; the
            code counts use every step).
        score_chunk: steps per batched K-candidate pass (memory: chunk x K x vocabulary floats).
        top: tokens listed per code.
        prefixes: shared prefixes for the forced continuations; None takes the first three
            texts' first 16 tokens.
        continuation_tokens: tokens per forced continuation.
    """
    if not texts:
        raise ValueError("The atlas needs at least one text.")
    device = next(model.parameters()).device
    num_codes = model.num_codes
    vocab = model.backbone.lm_head.out_features
    totals = _Accumulator(num_codes, vocab, device)
    for start in range(0, len(texts), batch_size):
        batch = _batch(tokenizer, texts[start : start + batch_size], max_length, device)
        hidden, _ = model.hidden_states(batch["input_ids"], batch["attention_mask"])
        valid = target_mask(batch)
        idm = model.inverse_dynamics.code_logits(hidden, batch["attention_mask"]).argmax(-1)
        policy = at_steps(model.policy_logits(hidden, batch["attention_mask"])[0]).argmax(-1)
        totals.idm += torch.bincount(idm[valid], minlength=num_codes)
        totals.policy += torch.bincount(policy[valid], minlength=num_codes)
        totals.seen += int(valid.sum())
        steps = valid.nonzero()[: max(max_scored_steps - totals.scored, 0)]
        if len(steps):
            scored = _Texts(model, batch, hidden, idm)
            for chunk in steps.split(score_chunk):
                totals.score(model, scored, chunk)
    if totals.scored == 0:
        raise ValueError("The texts have no steps to score: give texts of two tokens or more.")
    prefixes = prefixes or [
        tokenizer.decode(tokenizer(t, add_special_tokens=False).input_ids[:16]) for t in texts[:3]
    ]
    continuations = forced_continuations(model, tokenizer, prefixes, continuation_tokens)
    mean_prob = totals.prob / totals.scored
    # a difference, not a ratio: a ratio ranks first the rare tokens the backbone all but never says
    lift = mean_prob - totals.base / totals.scored
    entries = []
    for code in range(num_codes):
        entries.append(
            CodeEntry(
                code=code,
                idm_count=int(totals.idm[code]),
                policy_count=int(totals.policy[code]),
                mean_kl=float(totals.kl[code] / totals.scored),
                top_tokens=_top(tokenizer, mean_prob[code], top),
                lifted_tokens=_top(tokenizer, lift[code], top),
                continuations=continuations[code],
            )
        )
    return Atlas(entries, totals.seen, totals.scored, prefixes, model.codebook.weight.T.cpu())


def forced_continuations(
    model: CoLAModel, tokenizer, prefixes: list[str], tokens: int
) -> list[list[str]]:
    """Per code, the greedy continuation of each prefix with that code forced at every step."""
    config = GenerationConfig(max_new_tokens=tokens, token=Sampler(greedy=True), stop_at_eos=False)
    prompts = [p for _ in range(model.num_codes) for p in prefixes]
    codes = [[code] * tokens for code in range(model.num_codes) for _ in prefixes]
    texts = Generator(model, tokenizer, config).generate(prompts, "latent", codes).texts
    width = len(prefixes)
    return [texts[code * width : (code + 1) * width] for code in range(model.num_codes)]


def _top(tokenizer, scores: torch.Tensor, count: int) -> list[tuple[str, float]]:
    values, ids = scores.topk(count)
    return [
        (tokenizer.decode([i]), float(v))
        for v, i in zip(values.tolist(), ids.tolist(), strict=True)
    ]
