"""Corpus DataModule: packing, deterministic splits, file formats and their errors."""

import json

import pytest
import torch

from cola_lightning.data.arithmetic import arithmetic_problems
from cola_lightning.data.corpus import ArithmeticCorpus, TextCorpusDataModule, pack
from tests.conftest import SHARED_DATA


def corpus(**kwargs) -> TextCorpusDataModule:
    data = TextCorpusDataModule(tokenizer="bytes", seq_len=32, batch_size=2, **kwargs)
    data.setup()
    return data


def test_pack_concatenates_and_drops_the_tail():
    packed = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4)
    assert packed.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_arithmetic_problems_are_deterministic_and_correct():
    first, again = arithmetic_problems(50, seed=3), arithmetic_problems(50, seed=3)
    assert first == again
    assert first != arithmetic_problems(50, seed=4)
    for problem in first:
        assert problem.solution.endswith(f"The answer is {problem.answer}.")
        # every worked step is true arithmetic
        for line in problem.solution.splitlines()[1:-1]:
            expression, result = line.rsplit("=", 1)
            assert eval(expression.split(":")[-1].split(", so")[-1]) == int(result.strip(" ."))


def test_split_is_deterministic_disjoint_and_packed():
    data = corpus(arithmetic=ArithmeticCorpus(num_problems=50), val_fraction=0.2)
    again = corpus(arithmetic=ArithmeticCorpus(num_problems=50), val_fraction=0.2)
    assert torch.equal(data.train_set.tokens, again.train_set.tokens)
    assert torch.equal(data.val_set.tokens, again.val_set.tokens)
    assert data.train_set.tokens.shape[1] == 32
    other = corpus(arithmetic=ArithmeticCorpus(num_problems=50), val_fraction=0.2, split_seed=1)
    assert not torch.equal(data.val_set.tokens, other.val_set.tokens)
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape == (2, 32) and batch["attention_mask"].all()
    eos = 257
    text_tokens = torch.cat([data.train_set.tokens.flatten(), data.val_set.tokens.flatten()])
    assert (text_tokens == eos).sum() > 30  # every document ends with EOS


def test_jsonl_and_txt_files(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"body": f"document number {i} " * 3}) for i in range(20))
    )
    txt = tmp_path / "b.txt"
    txt.write_text("\n\n".join(f"paragraph {i} of plain text" for i in range(20)))
    data = corpus(files=[str(jsonl), str(txt)], text_field="body")
    total = data.train_set.tokens.numel() + data.val_set.tokens.numel()
    expected = sum(len(f"document number {i} " * 3) + 1 for i in range(20))
    expected += sum(len(f"paragraph {i} of plain text") + 1 for i in range(20))
    assert expected - 2 * 32 < total <= expected


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        corpus(files=[str(path)])


def test_missing_field_names_file_line_and_fields(tmp_path):
    path = tmp_path / "fields.jsonl"
    path.write_text('{"text": "fine"}\n{"content": "other"}\n')
    with pytest.raises(
        KeyError, match=r"fields.jsonl:2: no field 'text' \(fields: \['content'\]\)"
    ):
        corpus(files=[str(path)])


def test_missing_file_and_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data file not found"):
        corpus(files=[str(tmp_path / "nope.jsonl")])
    with pytest.raises(ValueError, match="exactly one"):
        TextCorpusDataModule(files=["a.txt"], arithmetic=ArithmeticCorpus())
    with pytest.raises(ValueError, match="fewer than seq_len"):
        small = ArithmeticCorpus(num_problems=2)
        TextCorpusDataModule(arithmetic=small, seq_len=1024, tokenizer="bytes").setup()


def test_reads_real_gsm8k_questions():
    data = corpus(files=[str(SHARED_DATA / "gsm8k_test.jsonl")], text_field="question")
    assert len(data.train_set) > 1000
