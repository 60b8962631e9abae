"""The settings of every search method; defaults are the reference MCTS-Q (DESIGN.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = (
    "greedy",
    "greedy_token",
    "best_of_n_latent",
    "best_of_n_token",
    "mcts",
    "mcts_q",
    "mcts_token",
)
TOKEN_METHODS = ("greedy_token", "best_of_n_token", "mcts_token")


@dataclass
class SearchConfig:
    """One search method and its budget.

    Args:
        method: ``greedy`` (latent), ``greedy_token``, ``best_of_n_latent`` (codes sampled),
            ``best_of_n_token`` (tokens sampled), ``mcts`` (plain MCTS over latent chunks),
            ``mcts_q`` (the reference's MCTS-Q), ``mcts_token`` (MCTS on the plain backbone).
        rounds: T, selection rounds of a tree search (128 in the reference).
        depth: D, the depth limit in generated tokens (256).
        root_breadth: b1, children of the root (4).
        breadth: b2, children of any other node (2).
        c_puct: the PUCT exploration weight (0.7).
        gamma: the discount of the MCTS-Q backup (0.99).
        max_tries: codes an MCTS-Q node may try (10): a code whose greedy token repeats a
            sibling's gives the same text and is used up without a child.
        uncertainty_threshold: MCTS-Q extends an edge greedily when u is below this (0.01).
        greedy_extension: tokens of that greedy extension (64).
        simulation_tokens: most tokens of a simulation (1024).
        stop_on_eos: MCTS-Q stops early once an expansion reaches EOS (the reference does).
        chunk_tokens: edge length of plain and token-level MCTS (128).
        max_chunks: depth of plain and token-level MCTS, in chunks (4).
        samples: N of best-of-N.
        code_temperature: policy temperature where codes are sampled (plain MCTS, best-of-N).
        token_temperature: temperature of sampled tokens (token MCTS rollouts: 0.5; best-of-N).
        answer_tokens: most tokens of the greedy continuation of an unfinished answer.
    """

    method: str = "mcts_q"
    rounds: int = 128
    depth: int = 256
    root_breadth: int = 4
    breadth: int = 2
    c_puct: float = 0.7
    gamma: float = 0.99
    max_tries: int = 10
    uncertainty_threshold: float = 0.01
    greedy_extension: int = 64
    simulation_tokens: int = 1024
    stop_on_eos: bool = True
    chunk_tokens: int = 128
    max_chunks: int = 4
    samples: int = 4
    code_temperature: float = 1.0
    token_temperature: float = 0.5
    answer_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown search method {self.method!r}; use one of {METHODS}.")
        for name in ("rounds", "depth", "root_breadth", "breadth", "max_tries", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"search.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("simulation_tokens", "chunk_tokens", "max_chunks", "answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"search.{name} must be >= 1, got {getattr(self, name)}.")
        if self.c_puct < 0 or not 0 <= self.gamma <= 1:
            raise ValueError(
                f"Need c_puct >= 0 and gamma in [0, 1], got {self.c_puct}, {self.gamma}."
            )

    @property
    def latent(self) -> bool:
        return self.method not in TOKEN_METHODS

    def check_codes(self, num_codes: int) -> None:
        """Latent trees branch on distinct codes: breadth cannot exceed K."""
        if self.latent and max(self.root_breadth, self.breadth) > num_codes:
            raise ValueError(
                f"search breadth ({self.root_breadth} at the root, {self.breadth} below) exceeds "
                f"the K={num_codes} codes of the CoLA model: lower root_breadth/breadth."
            )
