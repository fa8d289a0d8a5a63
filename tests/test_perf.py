"""The fast path: bench, channels_last, compile wiring, deferred NaN checks, peak memory, DDP."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.bench import PATHS, peak_memory_bytes, reset_peak_memory, run_bench
from kdistill.config import TrainConfig, load_config
from kdistill.data import load_dataset
from kdistill.engine.trainer import Trainer
from kdistill.errors import ConfigError, NonFiniteError
from kdistill.methods import create
from kdistill.models import create_model
from kdistill.teachers import ModuleTeacher

SYN = {"num_classes": 4, "input_shape": [1, 8, 8], "n_train": 96, "n_test": 64}


def test_bench_times_all_five_paths_on_cpu(capsys):
    from kdistill.cli import main

    rc = main(
        [
            "bench",
            "--teacher",
            "mlp",
            "--student",
            "mlp",
            "--dataset",
            "synthetic",
            "--option",
            "n_train=128",
            "--option",
            "input_shape=[1, 8, 8]",
            "--batch-size",
            "16",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--cache-views",
            "2",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["paths"]) == list(PATHS)
    for r in res["paths"].values():
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["peak_memory_bytes"] > 0
        # throughput and step time describe the same measurement
        assert r["images_per_s"] * r["step_ms"] / 1e3 == pytest.approx(16, rel=1e-9)
    assert res["paths"]["naive"]["speedup_vs_naive"] == 1.0
    assert "speedup_vs_naive" not in res["paths"]["teacher"]  # a forward pass is no training step
    # all three targets are checkable from these five paths, with the CPU's live-vs-naive bar
    targets = {t["name"]: t for t in res["targets"]}
    assert set(targets) == {"kd_live_vs_naive", "kd_cached_vs_student", "kd_live_vs_student_plus_teacher"}
    p = res["paths"]
    assert targets["kd_live_vs_naive"]["target"] == 1.0
    assert targets["kd_live_vs_naive"]["value"] == pytest.approx(
        p["kd_live"]["images_per_s"] / p["naive"]["images_per_s"], abs=1e-4)
    assert targets["kd_live_vs_student_plus_teacher"]["value"] == pytest.approx(
        p["kd_live"]["step_ms"] / (p["student"]["step_ms"] + p["teacher"]["step_ms"]), abs=1e-4)
    assert res["cache"]["views"] == 2 and res["cache"]["bytes"] > 0
    # the fast paths time the Trainer's own step (what `kdistill train` runs), and say so
    assert res["timed_step"] == "kdistill.engine.trainer.Trainer.train_step"
    assert {p: r["code_path"] == res["timed_step"] for p, r in res["paths"].items()} == {
        "student": True, "kd_live": True, "kd_cached": True, "naive": False, "teacher": False}
    assert res["config"]["precision"] == "fp32" and res["config"]["augment"] is True
    with pytest.raises(ConfigError, match="Unknown bench path"):
        run_bench("mlp", "mlp", "synthetic", paths=("fast",))


def test_peak_memory_sees_a_large_allocation():
    dev = torch.device("cpu")
    reset_peak_memory(dev)
    before = peak_memory_bytes(dev)
    big = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB of float32, touched by the fill
    after = peak_memory_bytes(dev)
    del big
    assert after - before >= 200 * 2**20


def _conv(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 4),
    )


def _fit(tmp_path, name: str, teacher=None, student=None, **train) -> tuple[dict, nn.Module, Trainer]:
    data = load_dataset("synthetic", **SYN)
    student = student if student is not None else _conv(0, 6)
    teacher = teacher if teacher is not None else ModuleTeacher(_conv(1, 8), 4)
    cfg = TrainConfig(
        **({"epochs": 2, "device": "cpu", "precision": "fp32", "optimizer": "sgd", "lr": 0.05} | train)
    )
    trainer = Trainer(
        create("kd", student, teacher),
        data.train,
        {"test": data.test},
        cfg,
        tmp_path / name,
        batch_size=32,
        log=lambda s: None,
    )
    return trainer.fit(), student, trainer


def test_channels_last_changes_layout_not_results(tmp_path):
    teacher = ModuleTeacher(_conv(1, 8), 4)
    res_cl, student, _ = _fit(tmp_path, "cl", teacher=teacher, channels_last=True)
    assert student[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert teacher.module[2].weight.is_contiguous(memory_format=torch.channels_last)
    res, plain, _ = _fit(tmp_path, "plain", channels_last=False)
    assert not plain[2].weight.is_contiguous(memory_format=torch.channels_last)
    # the default, "auto", means NHWC whenever the data are images, on this CPU too ...
    assert TrainConfig().channels_last == "auto"
    _, auto_student, auto = _fit(tmp_path, "auto", epochs=1)
    assert auto.channels_last is True and auto_student[2].weight.is_contiguous(memory_format=torch.channels_last)
    # ... and never for flat inputs, where there is no channel dimension to move
    flat = load_dataset("synthetic", n_train=64, n_test=32, num_classes=4, input_shape=[8])
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    flat_trainer = Trainer(
        create("kd", mlp, ModuleTeacher(nn.Sequential(nn.Linear(8, 4)), 4)), flat.train, {"test": flat.test},
        TrainConfig(epochs=1, device="cpu"), tmp_path / "flat", batch_size=32, log=lambda s: None,
    )
    assert flat_trainer.channels_last is False
    # the same arithmetic in another memory order
    for k in ("acc", "nll"):
        assert res_cl["final"]["test"][k] == pytest.approx(res["final"]["test"][k], abs=1e-4)
    assert res["peak_memory_bytes"] > 0


def test_compile_flag_compiles_student_and_teacher_once(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    teacher = ModuleTeacher(_conv(1, 8), 4)
    _, student, _ = _fit(tmp_path, "c", teacher=teacher, compile=True, epochs=1)
    assert compiled == [student, teacher.module]
    compiled.clear()
    _fit(tmp_path, "n", epochs=1)
    assert compiled == []
    # compile_scope: step compiles the distiller's whole forward, and nothing else
    _, _, trainer = _fit(tmp_path, "s", compile=True, compile_scope="step", epochs=1)
    assert compiled == [trainer.accelerator.unwrap_model(trainer.model)]


def test_step_scope_compile_gives_the_eager_results(tmp_path):
    """torch.compile of teacher + student + KD loss in one graph (inductor on the CPU) must
    train to the same numbers as the eager run: the same arithmetic, fused."""
    torch.manual_seed(0)
    teacher_net = _conv(1, 8)
    eager, _, _ = _fit(tmp_path, "eager", teacher=ModuleTeacher(copy.deepcopy(teacher_net), 4), epochs=1)
    fused, _, trainer = _fit(tmp_path, "step", teacher=ModuleTeacher(teacher_net, 4), epochs=1,
                             compile=True, compile_scope="step")
    distiller = trainer.accelerator.unwrap_model(trainer.model)
    assert distiller._compiled_call_impl is not None
    assert set(fused["final"]["test"]) == set(eager["final"]["test"])
    for k in eager["final"]["test"]:
        assert fused["final"]["test"][k] == pytest.approx(eager["final"]["test"][k], rel=1e-3, abs=1e-4)


def _nan_student() -> nn.Module:
    s = _conv(0, 6)
    with torch.no_grad():
        s[-1].bias.fill_(float("nan"))
    return s


def test_deferred_nonfinite_check_reports_within_log_every_steps(tmp_path, monkeypatch):
    with pytest.raises(NonFiniteError, match="Non-finite loss at epoch 0, step 0"):
        _fit(tmp_path, "now", student=_nan_student(), log_every=3)
    # what CUDA does: no per-step test, a device flag tested every log_every optimizer steps
    monkeypatch.setattr(Trainer, "_defer_nonfinite_checks", lambda self: True)
    with pytest.raises(NonFiniteError, match="within the 3 optimizer steps before step 3"):
        _fit(tmp_path, "later", student=_nan_student(), log_every=3)
    # a finite run is untouched by the deferred check
    res, _, _ = _fit(tmp_path, "fine", log_every=3)
    assert res["steps"] == 6


def test_log_every_is_validated():
    with pytest.raises(ConfigError, match="log_every"):
        load_config(None, ["student.model=mlp", "train.log_every=0"])


def test_teacher_is_outside_what_ddp_wraps():
    teacher = ModuleTeacher(_conv(1, 8), 4)
    d = create("kd", _conv(0, 6), teacher)
    wrapped = {id(p) for p in d.parameters()}
    assert wrapped.isdisjoint(id(p) for p in teacher.module.parameters())
    assert not any(k.startswith("_teacher") or "teacher" in k for k in d.state_dict())
    assert {id(p) for p in d.trainable_parameters()} == wrapped


@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path):
    """DDP over gloo (torchrun): half the batch per process = the same global batch, so the
    run must end where the one-process run ends, and write one set of files."""
    from safetensors.torch import save_file

    from kdistill.runs import run_experiment

    torch.manual_seed(1)
    ckpt = tmp_path / "teacher.safetensors"
    save_file(
        {k: v.contiguous() for k, v in create_model("mlp", 4, (1, 8, 8), hidden=(32,)).state_dict().items()},
        str(ckpt),
    )
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        "data: {name: synthetic, batch_size: 32,\n"
        "       options: {num_classes: 4, input_shape: [1, 8, 8], n_train: 256, n_test: 128}}\n"
        f"teacher: {{model: mlp, kwargs: {{hidden: [32]}}, checkpoint: {ckpt}}}\n"
        "student: {model: mlp, kwargs: {hidden: [16]}}\n"
        "method: {name: kd, temperature: 4}\n"
        "train: {epochs: 2, lr: 0.05, optimizer: sgd, device: cpu, precision: fp32}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "kdistill.cli",
            "train",
            str(cfg_file),
            "--run-dir",
            str(tmp_path / "two"),
            "--set",
            "data.batch_size=16",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = run_experiment(load_config(cfg_file), tmp_path / "one", log=lambda s: None)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["steps"] == one["steps"] == 16
    # the tolerance the README states: DDP averages each process's half-batch gradient and
    # then the two, one process averages the whole batch, so weights differ by float
    # rounding; losses agree to 1e-4 relative, and a test sample whose two top logits are that
    # close may flip, so accuracy and agreement agree within one test sample
    for k in ("nll", "kl_to_teacher"):
        assert two["final"]["test"][k] == pytest.approx(one["final"]["test"][k], rel=1e-4, abs=1e-5)
    for k in ("acc", "agreement"):
        assert abs(two["final"]["test"][k] - one["final"]["test"][k]) <= 1 / 128 + 1e-9
    rows2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    rows1 = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows2) == 2  # one row per epoch, not one per process
    # epoch means are over both processes' shards, so they match the one-process means
    for r1, r2 in zip(rows1, rows2, strict=True):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == [
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "model.json",
        "model.safetensors",
        "results.json",
    ]
    assert len(list((tmp_path / "two" / "checkpoints").iterdir())) == len(
        list((tmp_path / "one" / "checkpoints").iterdir())
    )


def _paths(**ips_ms):
    return {name: {"images_per_s": v[0], "step_ms": v[1]} for name, v in ips_ms.items()}


def test_check_targets_verdicts_at_and_around_each_bar():
    from kdistill.bench import check_targets, format_targets

    # the H100 calibration loop: student 107k, live 56k, cached 92k, naive 10k images/s
    p = _paths(student=(107e3, 2.39), kd_live=(56e3, 4.57), kd_cached=(92e3, 2.78), naive=(10e3, 25.6))
    t = {x["name"]: x for x in check_targets(p, "cuda")}
    assert t["kd_live_vs_naive"]["value"] == pytest.approx(5.6) and t["kd_live_vs_naive"]["met"]
    assert t["kd_cached_vs_student"]["value"] == pytest.approx(92 / 107, abs=1e-4)
    assert not t["kd_cached_vs_student"]["met"]  # 0.86 < 0.9
    assert "kd_live_vs_student_plus_teacher" not in t  # no teacher path measured
    # on a CPU the live-vs-naive bar is "not slower": 0.99x fails, 1.0x passes
    assert not check_targets(_paths(kd_live=(99, 1), naive=(100, 1)), "cpu")[0]["met"]
    assert check_targets(_paths(kd_live=(100, 1), naive=(100, 1)), "cpu")[0]["met"]
    assert not check_targets(_paths(kd_live=(499, 1), naive=(100, 1)), "cuda")[0]["met"]
    # live step within 10% of student + teacher forward, and just over it
    ok = _paths(student=(1, 2.0), teacher=(1, 1.0), kd_live=(1, 3.3))
    over = _paths(student=(1, 2.0), teacher=(1, 1.0), kd_live=(1, 3.31))
    assert check_targets(ok, "cuda")[0]["met"] and check_targets(ok, "cuda")[0]["value"] == pytest.approx(1.1)
    assert not check_targets(over, "cuda")[0]["met"]
    lines = format_targets({"targets": check_targets(p, "cuda")})
    assert lines[0].split()[-1] == "met" and lines[1].endswith("NOT met")


def test_bench_repeat_reports_the_median_of_interleaved_rounds():
    logged = []
    res = run_bench(
        "mlp", "mlp", "synthetic", {"n_train": 64, "input_shape": [1, 8, 8]}, batch_size=16, steps=2,
        warmup=1, device="cpu", paths=("student", "kd_cached"), cache_views=1, repeat=3, log=logged.append,
    )
    # round-robin: student, kd_cached, student, kd_cached, ...
    results = [line for line in logged if not line.startswith("bench:")]  # the rest are progress lines
    assert [line.split()[0] for line in results] == ["student", "kd_cached"] * 3
    assert any(line.startswith("bench: building the teacher cache") for line in logged)
    for r in res["paths"].values():
        rounds = r["rounds_images_per_s"]
        assert len(rounds) == 3
        assert r["images_per_s"] == pytest.approx(sorted(rounds)[1], rel=1e-3)
        assert r["images_per_s"] * r["step_ms"] / 1e3 == pytest.approx(16)
    assert res["config"]["repeat"] == 3 and res["cache"]["views"] == 1  # the cache was built once
    with pytest.raises(ConfigError, match="repeat must be at least 1"):
        run_bench("mlp", "mlp", "synthetic", repeat=0)


def test_bench_step_scope_compiles_the_training_forward_not_the_networks(monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    res = run_bench("mlp", "mlp", "synthetic", {"n_train": 64, "input_shape": [1, 8, 8]}, batch_size=16,
                    steps=1, warmup=1, device="cpu", paths=("student", "kd_live", "naive", "teacher"),
                    compile=True, compile_scope="step")
    # student and kd_live: the Distiller; naive: nothing; teacher alone: its network
    assert compiled == ["Distiller", "Distiller", "MLP"]
    assert res["config"]["compile_scope"] == "step"
    with pytest.raises(ConfigError, match="compile_scope must be networks or step"):
        run_bench("mlp", "mlp", "synthetic", compile=True, compile_scope="all")


def test_torchdistill_side_by_side_says_what_to_install_when_torchdistill_is_missing():
    """benchmarks/bench_torchdistill.py runs in a venv with torchvision and torchdistill;
    without them it names what failed to import and how to make that venv, exit code 2."""
    import importlib.util

    if importlib.util.find_spec("torchdistill") is not None:
        pytest.skip("torchdistill is installed here")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_torchdistill.py"
    proc = subprocess.run([sys.executable, str(script), "--steps", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "torchdistill: ModuleNotFoundError" in proc.stderr and "pip install torchdistill" in proc.stderr
    assert "Traceback" not in proc.stderr
