"""DOT (Zhao et al. ICCV 2023): the optimizer's update rule, the distiller's split of the
task and KD gradients, and `train.optimizer: dot` through the Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.config import TrainConfig, validate_config
from kdistill.engine.dot import DistillationOrientedTrainer, make_dot
from kdistill.errors import ConfigError
from kdistill.methods import create
from kdistill.runs import run_experiment


def pair(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)), nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def batches(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(12, 6, generator=g), "y": torch.randint(0, 4, (12,), generator=g)} for _ in range(n)]


def test_the_distiller_splits_kd_and_task_gradients_for_dot():
    teacher, student = pair()
    d = create("kd", student=student, teacher=teacher)  # 0.9 KD + 0.1 CE
    b = batches(1)[0]
    ref = d(b)
    ref["loss"].backward()
    total_grad = [p.grad.clone() for p in student.parameters()]
    d.zero_grad()
    # the same forward, CE alone
    ce = d(b)["loss_ce"]
    ce.backward()
    ce_grad = [p.grad.clone() for p in student.parameters()]
    d.zero_grad()

    got = {}
    d.grad_split = lambda params, grads: got.update({id(p): g for p, g in zip(params, grads)})
    out = d(b)
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-6)  # same value logged
    out["loss"].backward()
    for p, tot, c in zip(student.parameters(), total_grad, ce_grad):
        torch.testing.assert_close(p.grad, c)  # the backward carries the task part only
        torch.testing.assert_close(got[id(p)] + p.grad, tot, rtol=1e-5, atol=1e-7)  # KD part went to grad_split
    # evaluation forwards (no grad) do not call it
    got.clear()
    with torch.no_grad():
        d(b)
    assert not got


def test_dot_with_zero_delta_is_sgd_with_momentum():
    runs = []
    for kind in ("dot", "sgd"):
        teacher, student = pair()
        d = create("dkd", student=student, teacher=teacher, warmup=0)
        params = d.trainable_parameters()
        if kind == "dot":
            opt = DistillationOrientedTrainer(params, lr=0.1, momentum=0.9, weight_decay=5e-4, delta=0.0)
            opt.attach(d)
        else:
            opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        for b in batches(4):
            d(b)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        runs.append([p.detach().clone() for p in student.parameters()])
    moved = max((a - b).abs().max().item() for a, b in zip(runs[0], [p for p in pair()[1].parameters()]))
    assert moved > 1e-3  # the steps did something
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dot_without_kd_terms_is_plain_sgd_with_momentum():
    runs = []
    for kind in ("dot", "sgd"):
        _, student = pair()
        d = create("ce", student=student)
        opt = (DistillationOrientedTrainer(d.trainable_parameters(), lr=0.1, momentum=0.5, delta=0.3) if kind == "dot"
               else torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.5))
        if kind == "dot":
            opt.attach(d)
        for b in batches(3):
            d(b)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        runs.append([p.detach().clone() for p in student.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dot_update_rule_worked_numbers():
    # one scalar parameter, lr 1, momentum 0.5, delta 0.25: KD momentum 0.75, task momentum 0.25
    p = nn.Parameter(torch.tensor([0.0]))
    opt = DistillationOrientedTrainer([p], lr=1.0, momentum=0.5, weight_decay=0.0, delta=0.25)
    steps = [(1.0, 2.0), (1.0, 2.0), (0.0, 4.0)]  # (task gradient, KD gradient)
    v_task = v_kd = 0.0
    x = 0.0
    for g_task, g_kd in steps:
        p.grad = torch.tensor([g_task])
        opt.add_kd_grads([p], [torch.tensor([g_kd])])
        opt.step()
        v_task, v_kd = 0.25 * v_task + g_task, 0.75 * v_kd + g_kd
        x -= v_task + v_kd
        assert p.item() == pytest.approx(x)
    # by hand: after step 1 x = -3; step 2 v = (1.25, 3.5) -> -7.75; step 3 v = (0.3125, 6.625) -> -14.6875
    assert p.item() == pytest.approx(-14.6875)


def test_dot_divides_accumulated_kd_gradients_and_refuses_bad_settings():
    p = nn.Parameter(torch.tensor([0.0]))
    opt = DistillationOrientedTrainer([p], lr=1.0, momentum=0.5, delta=0.1, grad_accum=2)
    opt.add_kd_grads([p], [torch.tensor([3.0])])
    opt.add_kd_grads([p], [torch.tensor([1.0])])
    opt.step()
    assert p.item() == pytest.approx(-2.0)  # (3 + 1) / 2, no task gradient
    with pytest.raises(ConfigError, match="dot_delta"):
        DistillationOrientedTrainer([p], lr=0.1, momentum=0.95, delta=0.075)
    with pytest.raises(ConfigError, match="fp16"):
        make_dot([p], TrainConfig(optimizer="dot", precision="fp16"))
    assert TrainConfig(optimizer="dot").dot_delta == 0.075


def test_train_optimizer_dot_runs_through_the_trainer_and_differs_from_sgd(tmp_path, tiny_cfg):
    finals = {}
    for kind, delta in (("dot", 0.075), ("sgd", None)):
        train = {"optimizer": kind, "lr": 0.05, "momentum": 0.9, "epochs": 2}
        if delta is not None:
            train["dot_delta"] = delta
        cfg = tiny_cfg(train=train, output={"dir": str(tmp_path / kind)})
        res = run_experiment(validate_config(cfg), log=lambda line: None)
        rows = [json.loads(x) for x in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in rows if "train_loss" in r]
        assert len(epochs) == 2 and all(r["train_loss"] == r["train_loss"] for r in epochs)  # finite
        finals[kind] = epochs[-1]["train_loss"]
    assert finals["dot"] != finals["sgd"]
