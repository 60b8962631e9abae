"""The inject form around the model: exports keep it."""

import torch

from cola_lightning.checkpoints.export import export_cola, load_cola_export
from cola_lightning.models.tokenizer import byte_tokenizer
from tests.models.inject_models import inject_model


@torch.no_grad()
def test_export_round_trip_keeps_the_inject_form(tmp_path):
    model = inject_model()
    export_cola(model, byte_tokenizer(), tmp_path / "export")
    loaded = load_cola_export(tmp_path / "export").eval()
    assert loaded.inject_layer == 1
    ids = torch.randint(0, 256, (2, 6))
    codes = torch.randint(0, 8, (2, 6))
    expected = model.world_model_logits(model.hidden_states(ids)[0], codes)
    torch.testing.assert_close(
        loaded.world_model_logits(loaded.hidden_states(ids)[0], codes), expected
    )
