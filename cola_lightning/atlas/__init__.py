"""The action atlas: what each latent code does (stats.py), written out (report.py).

python -m cola_lightning.atlas --checkpoint <ckpt or export> --texts <jsonl or txt> --out DIR
"""
