"""Local lm-evaluation-harness tasks built from a GSM8K jsonl (no hub access needed).

    python -m cola_lightning.evaluation.lm_eval_tasks --data ../shared/data/gsm8k_test.jsonl \
        --out tasks/ [--count 100]
    lm_eval --model cola --model_args checkpoint=<ckpt>,mode=latent --include_path tasks/ \
        --tasks cola_gsm8k_choice,cola_gsm8k_gen

Writes, beside their data (jsonl, in `out`): ``cola_gsm8k_choice`` (multiple choice: the gold
answer among three other problems' answers, as `MultipleChoiceDataModule` builds it; metric acc)
and ``cola_gsm8k_gen`` (generate_until, the last number of the completion against the gold
answer; metric exact_match).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from cola_lightning.evaluation.choices import multiple_choice_records

CHOICE_TASK, GENERATION_TASK = "cola_gsm8k_choice", "cola_gsm8k_gen"


def _task(name: str, data: Path, **fields) -> dict:
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "doc_to_text": "{{context}}",
        **fields,
    }


def write_tasks(data: str, out: str | Path, count: int = 100, seed: int = 0) -> list[Path]:
    """Writes the two task yaml files and their jsonl data into `out`; returns the yaml paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = multiple_choice_records(data, "gsm8k", count, seed=seed)
    rows = out / "cola_gsm8k.jsonl"
    with rows.open("w") as handle:
        for record in records:
            # lm-eval puts its own " " between context and choice
            choices = [choice.removeprefix(" ") for choice in record["choices"]]
            handle.write(json.dumps({**record, "choices": choices}) + "\n")
    choice = _task(
        CHOICE_TASK,
        rows,
        output_type="multiple_choice",
        doc_to_choice="{{choices}}",
        doc_to_target="label",
        metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    )
    generation = _task(
        GENERATION_TASK,
        rows,
        output_type="generate_until",
        doc_to_target="{{answer}}",
        generation_kwargs={"until": ["\n\n", "Question:"], "max_gen_toks": 64, "do_sample": False},
        filter_list=[
            {
                "name": "last_number",
                "filter": [
                    {"function": "regex", "regex_pattern": r"(-?[\d,]*\.?\d+)", "group_select": -1},
                    {"function": "take_first"},
                ],
            }
        ],
        metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    )
    paths = []
    for task in (choice, generation):
        path = out / f"{task['task']}.yaml"
        path.write_text(yaml.safe_dump(task, sort_keys=False))
        paths.append(path)
    return paths


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a GSM8K jsonl (question, answer)")
    parser.add_argument("--out", required=True, help="directory for the task files")
    parser.add_argument("--count", type=int, default=100, help="questions per task")
    parsed = parser.parse_args(args)
    for path in write_tasks(parsed.data, parsed.out, parsed.count):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
