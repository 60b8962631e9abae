"""Prompt/response data: readers, templates, and a loss mask checked token by token."""

import json

import pytest
import torch

from cola_lightning.data.corpus import ArithmeticCorpus
from cola_lightning.data.sft import (
    Example,
    PromptResponseDataModule,
    format_prompt,
    pack_rows,
    read_examples,
    tokenize_example,
)
from cola_lightning.models.tokenizer import byte_tokenizer
from tests.conftest import SHARED_DATA


def test_loss_mask_covers_exactly_the_response_tokens():
    tokenizer = byte_tokenizer()
    row = tokenize_example(tokenizer, Example("2+2?", "4"), "plain", max_length=64)
    prompt = "User: 2+2?\nAssistant: "
    assert row["input_ids"] == list(prompt.encode()) + [ord("4"), tokenizer.eos_token_id]
    assert row["loss_mask"] == [0] * len(prompt) + [1, 1]
    for token, masked in zip(row["input_ids"], row["loss_mask"], strict=True):
        assert masked == (token in (ord("4"), tokenizer.eos_token_id))


def test_templates():
    tokenizer = byte_tokenizer()
    assert format_prompt(tokenizer, "hi", "auto") == "User: hi\nAssistant: "
    assert format_prompt(tokenizer, "hi", "Q: {prompt}\nA:") == "Q: hi\nA:"
    with pytest.raises(ValueError, match="must contain"):
        format_prompt(tokenizer, "hi", "no placeholder")


def test_batches_are_right_padded_with_masks():
    data = PromptResponseDataModule(
        arithmetic=ArithmeticCorpus(num_problems=20),
        tokenizer="bytes",
        batch_size=4,
        max_length=400,
    )
    data.setup()
    batch = next(iter(data.val_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    for i, n in enumerate(lengths.tolist()):
        assert (batch["input_ids"][i, n:] == 256).all()
        assert batch["loss_mask"][i, n:].sum() == 0
        assert batch["loss_mask"][i, n - 1] == 1  # the EOS ending the response is trained
    assert batch["loss_mask"].sum() < batch["attention_mask"].sum()


def test_packing_keeps_masks_aligned():
    rows = [
        {"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]},
        {"input_ids": [4, 5], "loss_mask": [0, 1]},
    ]
    assert pack_rows(rows, 2) == [
        {"input_ids": [1, 2], "loss_mask": [0, 1]},
        {"input_ids": [3, 4], "loss_mask": [1, 0]},
    ]


def test_real_gsm8k_and_math500_readers():
    gsm8k = read_examples(SHARED_DATA / "gsm8k_test.jsonl", "gsm8k")
    assert len(gsm8k) == 1319 and gsm8k[0].answer == "18"
    assert gsm8k[0].response.endswith("#### 18")
    math = read_examples(SHARED_DATA / "math500_test.jsonl", "math")
    assert len(math) == 500 and all(e.answer for e in math)


def test_bad_lines_name_file_and_line(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ValueError, match=r"gsm.jsonl:1: a GSM8K answer must end with '####"):
        read_examples(path, "gsm8k")
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"\n')
    with pytest.raises(ValueError, match=r"gsm.jsonl:2: not valid JSON"):
        read_examples(path)
    path.write_text('{"prompt": "p", "answer": "r"}\n')
    with pytest.raises(KeyError, match=r"gsm.jsonl:1: no field 'response'"):
        read_examples(path)


def test_val_files_and_generic_fields(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"q{i}", "a": f"a{i}"}) for i in range(6)))
    data = PromptResponseDataModule(
        files=[str(path)],
        val_files=[str(path)],
        prompt_field="q",
        response_field="a",
        tokenizer="bytes",
        template="{prompt}=",
    )
    data.setup()
    assert len(data.splits["train"]) == len(data.splits["val"]) == 6
    assert torch.tensor(data.splits["val"][0]["input_ids"]).tolist()[:3] == list(b"q0=")


def test_task_prompts_for_rl():
    from cola_lightning.data.tasks import TaskPromptDataModule

    data = TaskPromptDataModule(task="countdown", num_problems=20, tokenizer="bytes", val_size=5)
    data.setup()
    record = data.splits["val"][0]
    assert record["prompt"].startswith("User: ") and record["prompt"].endswith("Assistant: ")
    assert len(record["numbers"]) == 4 and int(record["answer"]) > 0
    assert len(data.splits["train"]) == 15
    with pytest.raises(ValueError, match="task"):
        TaskPromptDataModule(task="chess")
