"""Evaluation: benchmark accuracy (greedy, pass@k, maj@k, best-of-N) with confidence intervals,
capability preservation (perplexity, multiple choice), the lm-evaluation-harness model, and the
tasks built from local data. Run through the CLI: ``python -m cola_lightning validate --config
configs/eval/<benchmark>.yaml``."""
