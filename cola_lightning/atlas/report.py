"""The action atlas written out: TensorBoard (text, histograms, the codebook in the embedding
projector), a self-contained HTML page, and a JSON file."""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from cola_lightning.atlas.stats import Atlas, CodeEntry

STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
    ".bar{background:#4a7;height:10px}.tok{font-family:monospace;background:#eee;margin:1px}"
)


def _tokens(pairs: list[tuple[str, float]], fmt: str) -> str:
    return ", ".join(f"`{token!r}` {fmt.format(value)}" for token, value in pairs)


def code_markdown(entry: CodeEntry, atlas: Atlas) -> str:
    """One code's page as TensorBoard markdown."""
    lines = [
        f"**code {entry.code}**: IDM {entry.idm_count} / {atlas.steps_seen} steps, "
        f"policy {entry.policy_count}, mean KL to the backbone {entry.mean_kl:.3f} nats",
        "",
        f"most likely: {_tokens(entry.top_tokens, '{:.3f}')}",
        "",
        f"raised most above the backbone: {_tokens(entry.lifted_tokens, '{:+.3f}')}",
        "",
    ]
    for prefix, continuation in zip(atlas.prefixes, entry.continuations, strict=True):
        lines.append(f"* `{prefix!r}` → `{continuation!r}`")
    return "  \n".join(lines)


def write_tensorboard(atlas: Atlas, log_dir: str | Path) -> Path:
    """Text per code, code-frequency and KL histograms, and the codebook for the projector."""
    writer = SummaryWriter(str(log_dir))
    entries = atlas.entries
    for entry in entries:
        writer.add_text(f"atlas/code_{entry.code:03d}", code_markdown(entry, atlas))
    for name in ("idm", "policy"):
        counts = [getattr(e, f"{name}_count") for e in entries]
        choices = torch.repeat_interleave(torch.arange(len(entries)), torch.tensor(counts))
        writer.add_histogram(f"atlas/{name}_codes", choices, bins=len(entries))
    writer.add_histogram("atlas/mean_kl", torch.tensor([e.mean_kl for e in entries]))
    labels = [
        [f"code {e.code}", repr(e.top_tokens[0][0]), str(e.policy_count), f"{e.mean_kl:.3f}"]
        for e in entries
    ]
    writer.add_embedding(
        atlas.codebook,
        metadata=labels,
        metadata_header=["code", "top token", "policy count", "mean KL"],
        tag="codebook",
    )
    writer.close()
    return Path(log_dir)


def write_html(atlas: Atlas, path: str | Path, title: str = "CoLA action atlas") -> Path:
    """A self-contained page: one table row per code, sortable by eye, no external assets."""
    most = max(max(e.idm_count, e.policy_count) for e in atlas.entries) or 1
    rows = []
    for e in atlas.entries:
        bars = "".join(
            f'<div title="{name} {count}">{name} {count}'
            f'<div class="bar" style="width:{200 * count / most:.0f}px"></div></div>'
            for name, count in (("IDM", e.idm_count), ("policy", e.policy_count))
        )
        top = " ".join(
            f'<span class="tok">{html.escape(repr(t))} {p:.2f}</span>' for t, p in e.top_tokens
        )
        lifted = " ".join(
            f'<span class="tok">{html.escape(repr(t))} {v:+.3f}</span>' for t, v in e.lifted_tokens
        )
        continuations = "<br>".join(
            f"<b>{html.escape(p)}</b>{html.escape(c)}"
            for p, c in zip(atlas.prefixes, e.continuations, strict=True)
        )
        rows.append(
            f'<tr id="code-{e.code}"><th>code {e.code}</th><td>{bars}</td>'
            f"<td>{e.mean_kl:.3f}</td><td>{top}</td><td>{lifted}</td><td>{continuations}</td></tr>"
        )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{atlas.steps_seen} steps counted, {atlas.steps_scored} scored under all "
        f"{len(atlas.entries)} codes.</p><table><tr><th>code</th><th>chosen by</th>"
        "<th>mean KL to the backbone (nats)</th><th>most likely tokens</th>"
        "<th>tokens raised most above the backbone</th><th>forced continuations</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def write_json(atlas: Atlas, path: str | Path) -> Path:
    data = {
        "steps_seen": atlas.steps_seen,
        "steps_scored": atlas.steps_scored,
        "prefixes": atlas.prefixes,
        "codes": [dataclasses.asdict(e) for e in atlas.entries],
    }
    path = Path(path)
    path.write_text(json.dumps(data, indent=2))
    return path
