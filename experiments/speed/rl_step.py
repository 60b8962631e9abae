"""Seconds per RL step: our latent GRPO, our token GRPO and TRL's GRPOTrainer, one after another.

    pip install -e .[bench]          # trl, only for this script
    python experiments/speed/rl_step.py [--steps 6] [--runs latent token trl] [--out FILE]

Needs the embedded SmolLM2-135M (scripts/install.sh). The workload of issue 15 and DESIGN.md
section 9: 2 prompts x 4 completions x exactly 32 new tokens (EOS off for ours, `min_new_tokens`
for TRL, so every run generates the same tokens), full fine-tuning for tokens, only the policy for
latent, no KL, AdamW, fp32, one process. The latent parts are freshly initialised: their weights
change what is generated, not what a step costs. The first step of each run is a warm-up and is
left out of the means. Prints one JSON line per run (seconds per step and per generated token,
split into rollout and update) and appends them to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from cola_lightning.data.tasks import TaskPromptDataModule
from cola_lightning.models.backbone import BackboneSpec, load_causal_lm, load_tokenizer
from cola_lightning.rewards.registry import RewardSpec
from cola_lightning.rollout.engine import GenerationConfig
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.stages.optim import OptimizerConfig
from cola_lightning.stages.rl import LatentRLModule, RLConfig
from cola_lightning.stages.token_rl import TokenRLModule

SOURCE = "embedded:smollm2-135m"
PROMPTS, GROUP, NEW_TOKENS, LR = 2, 4, 32, 1e-6


def prompt_data() -> TaskPromptDataModule:
    return TaskPromptDataModule(
        task="arithmetic",
        num_problems=64,
        template="auto",
        batch_size=PROMPTS,
        val_size=2,
        tokenizer=SOURCE,
    )


class StepTimes(L.Callback):
    """The stage's own rollout and update timings for every training step."""

    def __init__(self) -> None:
        self.rollout: list[float] = []
        self.update: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.rollout.append(float(trainer.callback_metrics["timing/rollout_s"]))
        self.update.append(float(trainer.callback_metrics["timing/update_s"]))


def ours(kind: str, steps: int) -> tuple[list[float], list[float]]:
    """(rollout s, update s) per step of our latent or token GRPO."""
    stage = LatentRLModule if kind == "latent" else TokenRLModule
    sampled, greedy = Sampler(temperature=1.0), Sampler(greedy=True)
    module = stage(
        BackboneSpec(source=SOURCE),
        optimizer=OptimizerConfig(lr=LR, min_lr=LR, warmup_steps=0, weight_decay=0.0),
        rl=RLConfig(algorithm="grpo", group_size=GROUP, kl_coef=0.0),
        rewards=[RewardSpec("arithmetic")],
        accuracy_reward="arithmetic",
        generation=GenerationConfig(
            max_new_tokens=NEW_TOKENS,
            code=sampled,
            token=greedy if kind == "latent" else sampled,
            stop_at_eos=False,
        ),
    )
    times = StepTimes()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[times],
    )
    trainer.fit(module, prompt_data())
    return times.rollout, times.update


def trl_grpo(steps: int) -> tuple[list[float], list[float]]:
    """(rollout s, update s) per step of TRL's GRPOTrainer on the same model and prompts."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cola_lightning.rewards.registry import CompositeReward

    data = prompt_data()
    data.setup()
    records = data.splits["train"]
    by_prompt = {r["prompt"]: r for r in records}
    arithmetic = CompositeReward([RewardSpec("arithmetic")], False, 10.0)

    def reward(prompts, completions, **kwargs):
        examples = [by_prompt[p] for p in prompts]
        return arithmetic(prompts, completions, examples)[0].tolist()

    rollout: list[float] = []
    steps_s: list[float] = []

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, *args, **kwargs):
            start = time.perf_counter()
            result = super()._generate_and_score_completions(*args, **kwargs)
            rollout.append(time.perf_counter() - start)
            return result

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps_s.append(time.perf_counter() - self.start)

    tokenizer = load_tokenizer(SOURCE)
    model = load_causal_lm(BackboneSpec(source=SOURCE))
    # The embedded GGUF is de-quantized to fp32 on load, but transformers keeps it flagged as
    # quantized, and its Trainer refuses to fine-tune a quantized model.
    model.is_quantized = False
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=PROMPTS * GROUP,
            num_generations=GROUP,
            max_completion_length=NEW_TOKENS,
            generation_kwargs={"min_new_tokens": NEW_TOKENS},
            temperature=1.0,
            beta=0.0,
            learning_rate=LR,
            weight_decay=0.0,
            max_steps=steps,
            use_cpu=True,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            seed=0,
        )
        trainer = TimedGRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in records]),
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer.train()
    return rollout, [s - r for s, r in zip(steps_s, rollout, strict=True)]


def summary(name: str, rollout: list[float], update: list[float]) -> dict:
    rollout, update = rollout[1:], update[1:]  # the first step warms up
    tokens = PROMPTS * GROUP * NEW_TOKENS
    step = statistics.mean(r + u for r, u in zip(rollout, update, strict=True))
    return {
        "run": name,
        "steps_measured": len(rollout),
        "step_s": round(step, 3),
        "rollout_s": round(statistics.mean(rollout), 3),
        "update_s": round(statistics.mean(update), 3),
        "generated_tokens_per_step": tokens,
        "ms_per_generated_token": round(1000 * step / tokens, 2),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--runs", nargs="+", default=["latent", "token", "trl"])
    parser.add_argument("--out", default="experiments/speed/results_rl_step_cpu.jsonl")
    args = parser.parse_args()
    L.seed_everything(0)
    results = []
    for name in args.runs:
        times = trl_grpo(args.steps) if name == "trl" else ours(name, args.steps)
        results.append(summary(name, *times))
        print(json.dumps(results[-1]), flush=True)
    by_run = {r["run"]: r["step_s"] for r in results}
    ratios = {}
    if {"latent", "token"} <= by_run.keys():
        ratios["latent_over_token"] = round(by_run["latent"] / by_run["token"], 3)
    if {"token", "trl"} <= by_run.keys():
        ratios["token_over_trl"] = round(by_run["token"] / by_run["trl"], 3)
    print(json.dumps(ratios), flush=True)
    with Path(args.out).open("a") as handle:
        for row in [*results, ratios]:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
