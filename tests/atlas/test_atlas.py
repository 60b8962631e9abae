"""The action atlas on the tiny model: counts, every code, KL, the HTML page and TensorBoard."""

import json
from html.parser import HTMLParser

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cola_lightning.atlas.__main__ import main
from cola_lightning.atlas.stats import build_atlas
from cola_lightning.checkpoints.export import load_cola
from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.stages.losses import target_mask
from tests.models.inject_models import inject_model

TEXTS = ["Tom has 3 apples and buys 4 more.", "7 times 6 is 42.", "Hello there, friend!", "ab"]


class Rows(HTMLParser):
    """Collects the ids of table rows and the text of their header cells."""

    def __init__(self):
        super().__init__()
        self.ids, self.headers, self._in_th = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "tr" and dict(attrs).get("id"):
            self.ids.append(dict(attrs)["id"])
        self._in_th = tag == "th"

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data)


@pytest.fixture(scope="module")
def model_and_tokenizer(stage_one_b_checkpoint):
    return load_cola(stage_one_b_checkpoint[0])


def test_counts_sum_to_the_steps_seen_and_every_code_has_an_entry(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    atlas = build_atlas(model, tokenizer, TEXTS, batch_size=3, max_scored_steps=20, score_chunk=3)
    steps = sum(len(tokenizer(t, add_special_tokens=False).input_ids) - 1 for t in TEXTS)
    assert atlas.steps_seen == steps and atlas.steps_scored == 20
    assert [e.code for e in atlas.entries] == list(range(model.num_codes))
    assert sum(e.idm_count for e in atlas.entries) == steps
    assert sum(e.policy_count for e in atlas.entries) == steps
    assert all(e.mean_kl >= 0 for e in atlas.entries)
    assert all(len(e.continuations) == 3 for e in atlas.entries)


def test_idm_counts_and_kl_match_a_direct_computation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    text = TEXTS[0]
    atlas = build_atlas(model, tokenizer, [text], max_scored_steps=1000)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        hidden, _ = model.hidden_states(ids)
        codes = model.inverse_dynamics.code_logits(hidden).argmax(-1)[target_mask(batch)]
        base = torch.log_softmax(model.base_logits(hidden[0, :-1]), -1)
        kl = []
        for code in range(model.num_codes):  # one code at a time, no batching
            every = torch.full((1, ids.shape[1] - 1), code)
            log_code = torch.log_softmax(model.world_model_logits(hidden[:, :-1], every)[0], -1)
            kl.append(float((log_code.exp() * (log_code - base)).sum(-1).mean()))
    counts = torch.bincount(codes, minlength=model.num_codes).tolist()
    assert [e.idm_count for e in atlas.entries] == counts
    assert [e.mean_kl for e in atlas.entries] == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_cli_writes_html_json_and_tensorboard(stage_one_b_checkpoint, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp_path / "atlas"
    main(["--checkpoint", str(stage_one_b_checkpoint[0]), "--texts", str(texts), "--out", str(out),
          "--continuation-tokens", "4"])  # fmt: skip
    parser = Rows()
    parser.feed((out / "atlas.html").read_text())
    parser.close()
    num_codes = 8
    assert parser.ids == [f"code-{k}" for k in range(num_codes)]
    assert all(f"code {k}" in parser.headers for k in range(num_codes))
    data = json.loads((out / "atlas.json").read_text())
    assert len(data["codes"]) == num_codes
    events = EventAccumulator(str(out))
    events.Reload()
    tags = events.Tags()
    assert {f"atlas/code_{k:03d}/text_summary" for k in range(num_codes)} <= set(tags["tensors"])
    assert {"atlas/idm_codes", "atlas/policy_codes", "atlas/mean_kl"} <= set(tags["histograms"])
    projector = (out / "projector_config.pbtxt").read_text()
    assert "codebook" in projector
    vectors = next(out.glob("*/codebook/tensors.tsv")).read_text().strip().splitlines()
    assert len(vectors) == num_codes and len(vectors[0].split("\t")) == 32


def test_inject_form_kl_matches_one_teacher_forced_pass_per_code_and_step():
    """Each step's K candidates read the text before it with the IDM's codes, as one full pass."""
    model, tokenizer = inject_model(), byte_tokenizer()
    texts = [TEXTS[1], TEXTS[3]]  # ragged: 15 steps and 1
    atlas = build_atlas(model, tokenizer, texts, score_chunk=5, continuation_tokens=2)
    kl = torch.zeros(model.num_codes)
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
            hidden = model.hidden_states(ids)[0][:, :-1]
            idm = model.inverse_dynamics.code_logits(model.hidden_states(ids)[0]).argmax(-1)
            base = torch.log_softmax(model.token_logits(model.token_states(ids)[0])[0], -1)
            for t in range(hidden.shape[1]):  # one full pass per code, the K as a batch
                codes = idm[:, : t + 1].repeat(model.num_codes, 1)
                codes[:, t] = torch.arange(model.num_codes)  # the text's own codes before t
                states = hidden[:, : t + 1].expand(model.num_codes, -1, -1)
                log_code = torch.log_softmax(model.world_model_logits(states, codes)[:, t], -1)
                kl += (log_code.exp() * (log_code - base[t])).sum(-1)
    assert atlas.steps_scored == 16
    expected = (kl / atlas.steps_scored).tolist()
    assert [e.mean_kl for e in atlas.entries] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert all(len(e.continuations) == 2 for e in atlas.entries)
