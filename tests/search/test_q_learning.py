"""The Q stage: Double-DQN targets by hand, target-network syncs, and a short real fit."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cola_lightning.data.solutions import SolutionDataModule, collate_solutions, solution_row
from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.search.q_model import QModelConfig, td_targets
from cola_lightning.stages.q_learning import QLearningModule
from tests.conftest import TINY_COLA, tiny_spec, tiny_trainer

GAMMA = 0.9


def q_module(sync_every: int = 50, lr: float = 1e-3) -> QLearningModule:
    module = QLearningModule(
        tiny_spec(),
        cola=TINY_COLA,
        q=QModelConfig(layers=1, gamma=GAMMA),
        optimizer={"lr": lr, "min_lr": lr, "warmup_steps": 0},
        sync_every=sync_every,
    )
    module.configure_model()
    return module


def test_td_targets_are_double_dqn_with_the_reward_at_the_last_step():
    # three response steps, K = 3; online and target networks disagree on the best next code
    online_next = torch.tensor([[[0.1, 0.5, 0.2], [0.7, 0.1, 0.0], [0.0, 0.0, 9.0]]])
    target_next = torch.tensor([[[0.3, 0.2, 0.9], [0.4, 0.8, 0.1], [5.0, 5.0, 5.0]]])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    last = torch.tensor([[False, False, True]])
    targets = td_targets(online_next, target_next, rewards, last, GAMMA)
    # online argmax 1 -> target's 0.2 (not its max 0.9); argmax 0 -> 0.4; the last step: R only
    assert targets.tolist() == [pytest.approx([GAMMA * 0.2, GAMMA * 0.4, 1.0])]


def test_batches_align_states_actions_and_the_reward():
    tokenizer = byte_tokenizer()
    record = {"prompt": "ab", "tokens": [120, 121, 122], "codes": [5, 2, 7], "reward": 1.0}
    row = solution_row(tokenizer, record)
    short = solution_row(tokenizer, {**record, "tokens": [9], "codes": [1]})
    batch = collate_solutions([row, short], 256)
    # state i reads x_1..x_i; the state before the first response token is the prompt's last
    assert batch["input_ids"][0].tolist() == [97, 98, 120, 121, 122]
    assert batch["actions"][0].tolist() == [0, 5, 2, 7, 0]
    assert batch["steps"][0].tolist() == [False, True, True, True, False]
    assert batch["last"][0].tolist() == [False, False, False, True, False]
    assert batch["rewards"][0].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]


def test_td_loss_on_a_three_step_solution_equals_the_hand_computed_loss():
    module = q_module()
    torch.manual_seed(1)
    for network in (module.q_model, module.q_target):  # heads that differ (zero at init)
        torch.nn.init.normal_(network.head.weight)
    record = {"prompt": "ab", "tokens": [120, 121, 122], "codes": [5, 2, 7], "reward": 1.0}
    batch = collate_solutions([solution_row(byte_tokenizer(), record)], 256)
    with torch.no_grad():
        loss, value = module.td_loss(batch)
        hidden, _ = module.model.hidden_states(batch["input_ids"])
        q, qt = module.q_model(hidden)[0][0], module.q_target(hidden)[0][0]
    # states 1, 2, 3 (codes 5, 2, 7); states 2, 3 bootstrap from their successors, 3 is last
    targets = [GAMMA * qt[2, q[2].argmax()], GAMMA * qt[3, q[3].argmax()], 1.0]
    taken = [q[1, 5], q[2, 2], q[3, 7]]
    expected = sum((a - t) ** 2 for a, t in zip(taken, targets, strict=True)) / 3
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(value) == pytest.approx(float(sum(taken) / 3), rel=1e-5)


class RecordSyncs(L.Callback):
    """Before each update: whether target == online, and the target's head."""

    def __init__(self) -> None:
        self.equal, self.heads = [], []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        online, target = module.q_model.state_dict(), module.q_target.state_dict()
        self.equal.append(all(torch.equal(online[k], target[k]) for k in online))
        self.heads.append(target["head.weight"].clone())


def write_solutions(path) -> None:
    """Eight solutions, each rewarded 1 when its response starts with "1" (a learnable Q)."""
    rows = []
    for i in range(8):
        response = f"{i % 2}{i}"
        tokens = list(response.encode())
        codes = [(i + j) % TINY_COLA.num_codes for j in range(len(tokens))]
        rows.append({"prompt": f"{i}+1=", "tokens": tokens, "codes": codes, "reward": i % 2})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fit_syncs_every_n_steps_trains_only_q_and_logs(tmp_path):
    write_solutions(tmp_path / "solutions.jsonl")
    data = SolutionDataModule(
        [str(tmp_path / "solutions.jsonl")], val_fraction=0, batch_size=4, tokenizer="bytes"
    )
    module = q_module(sync_every=3, lr=3e-3)
    frozen = {k: v.clone() for k, v in module.model.state_dict().items()}
    record, steps = RecordSyncs(), 16
    trainer = tiny_trainer(
        steps,
        logger=TensorBoardLogger(tmp_path, name="q"),
        log_every_n_steps=1,
        limit_val_batches=0,
        callbacks=[record],
    )
    trainer.fit(module, data)

    synced = [step % 3 == 0 for step in range(steps)]
    assert record.equal == synced  # right after a sync the target is the online network
    changed = [not torch.equal(a, b) for a, b in zip(record.heads, record.heads[1:], strict=False)]
    assert changed == synced[1:]  # and it changes only at syncs
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in frozen.items())
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in module.q_model.parameters()}

    (events_file,) = (tmp_path / "q/version_0").glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    assert [e.value for e in events.Scalars("q/target_sync")] == [float(s) for s in synced]
    losses = [e.value for e in events.Scalars("q/td_loss")]
    values = [e.value for e in events.Scalars("q/value_mean")]
    assert len(losses) == len(values) == steps
    assert values[0] == 0.0 and values[-1] != 0.0  # the zero head has moved
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
