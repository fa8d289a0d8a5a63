"""docs/ARCHITECTURE.md, recipe "Add a task": a task registered from this test module (a
toy regression, compared on test mean squared error) goes through ``kdistill train
--check``, ``train``, ``eval``, ``compare`` and ``report`` without a line of kdistill
changed. Tiny MLPs on generated data, seconds."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from kdistill.cli import main
from kdistill.config import RunConfig, dump_config
from kdistill.errors import ConfigError
from kdistill.task import Headline, Task, register_task


def toy_data(cfg: RunConfig):
    """``y = sin(x0) + x1 * x2`` on Gaussian inputs; ``data.options``: n, seed."""
    n, seed = cfg.data.options.get("n", 256), cfg.data.options.get("seed", 0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = torch.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    cut = n * 3 // 4
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1), nn.Flatten(0))


def fit(net: nn.Module, x, target, epochs: int, lr: float, log=None, test=None) -> list[dict]:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rows = []
    for epoch in range(epochs):
        loss = F.mse_loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if test is not None:
            with torch.no_grad():
                rows.append({"epoch": epoch, "train_loss": loss.item(), "test_mse": F.mse_loss(net(test[0]), test[1]).item()})
    return rows


@register_task("toy-regression")
class ToyRegression(Task):
    """A student MLP fits the labels mixed (``method: {name: kd, alpha}``) with a bigger
    teacher's outputs; ``method: ce`` is the labels alone."""

    config = RunConfig  # the shared sections: data.options, student.kwargs, method, train, output
    headline = Headline("test", "mse", "mse", "test mean squared error", higher_is_better=False, percent=False)

    def check(self, cfg, log, trust=False):
        (x, _), _ = toy_data(cfg)
        hidden = cfg.student.kwargs.get("hidden", 8)
        if not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"student.kwargs.hidden must be a positive integer, got {hidden!r}")
        log(f"student: {sum(p.numel() for p in mlp(hidden).parameters())} parameters, output {tuple(mlp(hidden)(x[:2]).shape)}")

    def run(self, cfg, run_dir=None, resume=False, log=print, trust=False):
        self.check(cfg, log)
        path = Path(run_dir or Path(cfg.output.dir) / (cfg.output.name or "toy"))
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text(dump_config(cfg))
        train, test = toy_data(cfg)
        torch.manual_seed(cfg.train.seed)
        target, alpha = train[1], cfg.method.get("alpha", 0.5) if cfg.method["name"] != "ce" else 0.0
        if alpha:
            teacher = mlp(64)
            fit(teacher, *train, 300, 0.01)
            with torch.no_grad():
                target = (1 - alpha) * train[1] + alpha * teacher(train[0])
        student = mlp(cfg.student.kwargs.get("hidden", 8))
        rows = fit(student, train[0], target, cfg.train.epochs, cfg.train.lr, test=test)
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        torch.save(student.state_dict(), path / "student.pt")
        result = {"task": self.name, "name": path.name, "seed": cfg.train.seed, "method": [cfg.method["name"]],
                  "dataset": {"name": "toy", "num_classes": 1, "train": len(train[1]), "test": len(test[1])},
                  "student": {"model": "mlp", "params": sum(p.numel() for p in student.parameters())},
                  "final": {"test": {"mse": rows[-1]["test_mse"]}},
                  "best": {"test": {"mse": min(r["test_mse"] for r in rows)}}, "run_dir": str(path)}
        (path / "results.json").write_text(json.dumps(result))
        return result

    def summary(self, result):
        return f"toy run {result['name']}", ["model", "test mse"], [["student", f"{result['final']['test']['mse']:.4f}"]]

    def evaluate(self, run_dir, trust_code=False, **options):
        cfg = RunConfig.model_validate(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))
        student = mlp(cfg.student.kwargs.get("hidden", 8))
        student.load_state_dict(torch.load(Path(run_dir) / "student.pt", weights_only=True))
        _, (x, y) = toy_data(cfg)
        with torch.no_grad():
            return {"test": {"mse": F.mse_loss(student(x), y).item()}}


def config(tmp_path, file: str = "toy.yaml", **over) -> Path:
    raw = {"task": "toy-regression", "data": {"name": "toy", "options": {"n": 256}},
           "student": {"model": "mlp", "kwargs": {"hidden": 8}}, "method": {"name": "kd", "alpha": 0.5},
           "train": {"epochs": 60, "lr": 0.03}, "output": {"dir": str(tmp_path), "name": "toy"}, **over}
    path = tmp_path / file
    path.write_text(yaml.safe_dump(raw))
    return path


def test_recipe_a_task_registered_outside_checks_trains_evaluates_and_compares(tmp_path, capsys):
    cfg = config(tmp_path)
    assert main(["train", str(cfg), "--check"]) == 0
    assert "task toy-regression" in capsys.readouterr().out and not (tmp_path / "toy").exists()
    bad = config(tmp_path, "bad.yaml", student={"model": "mlp", "kwargs": {"hidden": 0}})
    assert main(["train", str(bad), "--check"]) != 0
    assert "student.kwargs.hidden" in capsys.readouterr().err
    assert main(["train", str(cfg)]) == 0
    res = json.loads((tmp_path / "toy" / "results.json").read_text())
    assert "test mse" in capsys.readouterr().out
    assert res["final"]["test"]["mse"] < torch.var(toy_data(RunConfig.model_validate(yaml.safe_load(
        cfg.read_text())))[1][1]).item()  # it learnt something: below predicting the mean
    assert main(["eval", str(tmp_path / "toy")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert abs(again["test"]["mse"] - res["final"]["test"]["mse"]) < 1e-6
    out = tmp_path / "grid"
    assert main(["compare", str(cfg), "--methods", "kd", "--seeds", "0,1", "--out", str(out)]) == 0
    agg = json.loads((out / "compare.json").read_text())["aggregate"]
    rows = {r["label"]: r for r in agg["rows"]}
    kd = [json.loads((out / f"kd-s{s}" / "results.json").read_text())["final"]["test"]["mse"] for s in (0, 1)]
    scratch = [json.loads((out / f"scratch-s{s}" / "results.json").read_text())["final"]["test"]["mse"] for s in (0, 1)]
    assert rows["kd"]["last_acc"]["mean"] == sum(kd) / 2
    assert abs(rows["kd"]["diff_last"]["mean"] - (sum(kd) - sum(scratch)) / 2) < 1e-12
    md = (out / "compare.md").read_text()
    assert "| last mse |" in md and "test mean squared error (lower is better)" in md
    assert (out / "report.html").is_file() and (out / "plots" / "learning_curves.png").is_file()
