"""The lm-eval model on local tasks built from ../shared/data, through lm-eval's own CLI."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from cola_lightning.evaluation.lm_eval_tasks import CHOICE_TASK, GENERATION_TASK, write_tasks
from tests.conftest import SHARED_DATA, run_cli

pytest.importorskip("lm_eval", reason="lm-eval is the optional [eval] extra")


def direct_logprob(model, tokenizer, context: str, continuation: str, mode: str) -> float:
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    cont = tokenizer(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        hidden, _ = model.hidden_states(ids)
        if mode == "token":
            logits = model.base_logits(hidden)
        else:
            logits = model.world_model_logits(hidden, model.policy_logits(hidden)[0].argmax(-1))
    logprobs = torch.log_softmax(logits[0].float(), -1)
    return sum(float(logprobs[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_lm_eval_cli_scores_like_a_direct_forward(stage_one_b_checkpoint, tmp_path):
    """Latent mode through lm-eval's CLI (token mode's scores are checked in test_module.py)."""
    mode = "latent"
    from cola_lightning.checkpoints.export import load_cola

    checkpoint = stage_one_b_checkpoint[0]
    write_tasks(str(SHARED_DATA / "gsm8k_test.jsonl"), tmp_path / "tasks", count=3)
    lm_eval = shutil.which("lm_eval") or pytest.fail("lm-eval is installed but has no CLI")
    args = [
        "--model", "cola",
        "--model_args", f"checkpoint={checkpoint},mode={mode},max_new_tokens=8",
        "--tasks", f"{CHOICE_TASK},{GENERATION_TASK}",
        "--include_path", str(tmp_path / "tasks"),
        "--output_path", str(tmp_path / "out"),
        "--log_samples",
        "--batch_size", "2",
        "--device", "cpu",
    ]  # fmt: skip
    result = run_cli(args, tmp_path, module="lm_eval", extra_env={"HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, (lm_eval, result.stderr[-3000:])
    samples = {}
    for path in (tmp_path / "out").rglob("samples_*.jsonl"):
        task = CHOICE_TASK if CHOICE_TASK in path.name else GENERATION_TASK
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(samples[CHOICE_TASK]) == 3 and len(samples[GENERATION_TASK]) == 3
    model, tokenizer = load_cola(checkpoint)
    for sample in samples[CHOICE_TASK]:
        doc = sample["doc"]
        got = [float(resp[0][0]) for resp in sample["resps"]]
        want = [
            direct_logprob(model, tokenizer, doc["context"], " " + c, mode) for c in doc["choices"]
        ]
        assert got == pytest.approx(want, abs=1e-4)
    for sample in samples[GENERATION_TASK]:
        assert isinstance(sample["resps"][0][0], str)


def test_rolling_loglikelihood_reads_long_documents_in_windows(stage_one_b_checkpoint):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from cola_lightning.evaluation.harness import CoLALM
    from cola_lightning.evaluation.likelihood import continuation_logprobs

    text = "Mia has 3 apples and buys 4 more, so she has 7 apples."
    request = SimpleNamespace(args=(text,))
    whole = CoLALM(str(stage_one_b_checkpoint[0]), mode="latent")
    model, tokenizer = whole.model, whole.tokenizer
    (unchunked,) = continuation_logprobs(model, tokenizer, [("", text)], "latent")
    assert whole.loglikelihood_rolling([request]) == pytest.approx([unchunked[0]], abs=1e-5)
    chunked = CoLALM(str(stage_one_b_checkpoint[0]), mode="latent", max_length=16)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    rolling = get_rolling_token_windows(ids, tokenizer.eos_token_id, 16, 1)
    windows = list(map(make_disjoint_window, rolling))
    assert len(windows) > 3 and sum(len(cont) for _, cont in windows) == len(ids)
    expected = 0.0
    for context, continuation in windows:
        sequence = torch.tensor([context + continuation])
        with torch.no_grad():
            hidden, _ = model.hidden_states(sequence)
            codes = model.policy_logits(hidden)[0].argmax(-1)
            logprobs = torch.log_softmax(model.world_model_logits(hidden, codes)[0].float(), -1)
        expected += sum(
            float(logprobs[len(context) - 1 + i, token]) for i, token in enumerate(continuation)
        )
    (got,) = chunked.loglikelihood_rolling([request])
    assert got == pytest.approx(expected, abs=1e-4)
    assert got != pytest.approx(unchunked[0], abs=1e-3)  # less context per token: not the same
