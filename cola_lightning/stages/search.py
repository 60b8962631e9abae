"""Test-time search and solution sampling as ``predict`` stages.

    python -m cola_lightning predict --config configs/quickstart/search.yaml
    python -m cola_lightning predict --config configs/quickstart/sample_solutions.yaml

`SearchModule` runs one search method per problem of a `TaskPromptDataModule` and writes one row
per problem: the chosen response and answer, its score, its correctness (when the gold answer is
known), the cost, and `oracle` (true when the scorer read the gold answer). Accuracy and cost per
method go to TensorBoard. `SolutionSamplingModule` writes sampled CoLA solutions with their codes
and rewards: the Q-learning stage's data.
"""

from __future__ import annotations

from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.rewards import math as math_reward
from cola_lightning.rewards.registry import CompositeReward, RewardSpec
from cola_lightning.rollout.engine import GenerationConfig, Generator
from cola_lightning.rollout.sampling import prompt_streams
from cola_lightning.search.config import SearchConfig
from cola_lightning.search.q_model import QModelConfig, load_q_model
from cola_lightning.search.scorers import Scorer, ScorerConfig
from cola_lightning.search.searcher import Searcher
from cola_lightning.stages.base import CoLAStage, _as


class SearchModule(CoLAStage):
    """Searches; trains nothing.

    Args:
        backbone: where the pretrained LM comes from.
        init_from: the CoLA checkpoint to search with.
        cola: sizes of the latent-action parts (must match the checkpoint).
        search: the method and its budget (defaults: the reference's MCTS-Q).
        scorer: what scores simulations (default: answer agreement, not the oracle).
        q_from: a `QLearningModule` checkpoint (MCTS-Q and the ``q_value`` scorer need one).
        q: the Q-model's sizes (must match `q_from`).
        accuracy_reward: the verifiable reward that grades the chosen answer against the gold one
            (recorded as `correct`; it never steers the search unless the scorer is the oracle).
        stop_strings: texts that end a response besides EOS.
        seed: seed of the search's sampling: each problem draws from its own stream of (seed,
            prompt), so the same seed gives the same tree in any batch and on any rank.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        init_from: str | None = None,
        cola: CoLAConfig | None = None,
        search: SearchConfig | None = None,
        scorer: ScorerConfig | None = None,
        q_from: str | None = None,
        q: QModelConfig | None = None,
        accuracy_reward: str = "math",
        stop_strings: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone, cola, init_from=init_from)
        self.search_config = _as(SearchConfig, search) or SearchConfig()
        self.scorer_config = _as(ScorerConfig, scorer) or ScorerConfig()
        self.search_config.check_codes(self.cola_config.num_codes)
        self.q_from, self.q_config = q_from, _as(QModelConfig, q) or QModelConfig()
        self.accuracy = CompositeReward([RewardSpec(accuracy_reward)], timeout_s=None)
        self.stop_strings, self.seed = list(stop_strings or []), seed
        self.q_model = None
        self.rows: list[dict] = []

    def configure_model(self) -> None:
        super().configure_model()
        if self.q_from is not None and self.q_model is None:
            config, k = self.model.backbone.config, self.model.num_codes
            self.q_model = load_q_model(self.q_from, config, self.q_config, k).to(self.device)

    def on_predict_start(self) -> None:
        self.model.eval()
        self.searcher = Searcher(
            self.model,
            self.tokenizer,
            self.search_config,
            Scorer(self.scorer_config),
            self.q_model,
            self.stop_strings,
        )
        self.rows = []

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        """Searches the batch's problems at once: their decodes share batches (`search_many`)."""
        prompts = [record["prompt"] for record in batch]
        # a stream per problem: its tree does not depend on the batch or rank it is searched in
        streams = prompt_streams(prompts, self.device, self.seed)
        results = self.searcher.search_many(prompts, batch, streams)
        rows = [self.row(record, result) for record, result in zip(batch, results, strict=True)]
        self.rows.extend(rows)
        return rows

    def row(self, record: dict, result) -> dict:
        """One output row: the answer, its score, its correctness (with a gold answer), the cost."""
        gold = record.get("answer")
        correct = None
        if gold is not None:
            rewards, _ = self.accuracy([record["prompt"]], [result.response], [record])
            correct = bool(rewards[0] >= 1.0)
        return {
            "prompt": record["prompt"],
            "gold": None if gold is None else str(gold),
            "method": self.search_config.method,
            "scorer": self.scorer_config.kind,
            "oracle": self.scorer_config.oracle,
            "response": result.response,
            "answer": math_reward.extract_answer(result.response),
            "score": result.score,
            "correct": correct,
            "cost": result.cost.as_dict(),
        }

    def on_predict_end(self) -> None:
        writer = self.tensorboard
        if writer is None or not self.rows:
            return
        tag = f"search/{self.search_config.method}/{self.scorer_config.kind}"
        graded = [r["correct"] for r in self.rows if r["correct"] is not None]
        if graded:
            writer.add_scalar(f"{tag}/accuracy", sum(graded) / len(graded), 0)
        for name in ("backbone_tokens", "world_model_evals", "nodes", "rounds", "wall_s"):
            mean = sum(r["cost"][name] for r in self.rows) / len(self.rows)
            writer.add_scalar(f"{tag}/{name}", mean, 0)
        writer.flush()


class SolutionSamplingModule(CoLAStage):
    """Samples CoLA solutions and writes rows (prompt, response, tokens, codes, reward).

    Args:
        backbone: where the pretrained LM comes from.
        init_from: the CoLA checkpoint to sample with.
        cola: sizes of the latent-action parts (must match the checkpoint).
        generation: lengths and samplers (codes sampled, tokens greedy, as in the paper's RL).
        rewards: the rewards that score each solution (registry names or module:function paths).
        samples_per_prompt: solutions per prompt.
        seed: seed of the sampling: each solution draws from its own stream of (seed, copy,
            prompt), the same in any batch and on any rank.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        init_from: str | None = None,
        cola: CoLAConfig | None = None,
        generation: GenerationConfig | None = None,
        rewards: list[RewardSpec] | None = None,
        samples_per_prompt: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone, cola, init_from=init_from)
        self.generation = _as(GenerationConfig, generation) or GenerationConfig()
        specs = [_as(RewardSpec, r) for r in rewards or [RewardSpec("math")]]
        self.reward = CompositeReward(specs, timeout_s=None)
        self.samples_per_prompt, self.seed = samples_per_prompt, seed

    def on_predict_start(self) -> None:
        self.model.eval()

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        records = [r for r in batch for _ in range(self.samples_per_prompt)]
        prompts = [r["prompt"] for r in records]
        engine = Generator(self.model, self.tokenizer, self.generation)
        streams = prompt_streams(prompts, self.device, self.seed)
        rollout = engine.generate(prompts, "latent", generator=streams)
        rewards, _ = self.reward(prompts, rollout.texts, records)
        return [
            {
                "prompt": record["prompt"],
                "gold": None if record.get("answer") is None else str(record["answer"]),
                "response": rollout.texts[i],
                "tokens": rollout.token_ids[i],
                "codes": rollout.codes[i],
                "reward": float(rewards[i]),
            }
            for i, record in enumerate(records)
        ]
