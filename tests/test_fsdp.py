"""train.fsdp: the student sharded over 2 CPU processes (gloo) with FSDP2 through Accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdistill.config import TrainConfig, load_config
from kdistill.data import load_dataset
from kdistill.engine import sharding
from kdistill.engine.trainer import Trainer
from kdistill.errors import ConfigError
from kdistill.methods import create
from kdistill.models import create_model
from kdistill.teachers import ModuleTeacher

FILES = ["checkpoints", "config.yaml", "metrics.jsonl", "model.json", "model.safetensors", "results.json"]


def _run_on_two_processes(script: str, tmp_path: Path, *args: str) -> None:
    """Run the Python ``script`` on 2 gloo processes with ``tmp_path`` and ``args`` as its
    arguments; it writes what each rank saw under ``tmp_path``."""
    path = tmp_path / "script.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(path), str(tmp_path), *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _torchrun(cfg_file, run_dir, *sets: str, resume: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "kdistill.cli", "train", str(cfg_file), "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def mlp_config(tmp_path_factory):
    """A tiny KD run whose student has no BatchNorm: 2 processes x 16 = 1 process x 32 exactly."""
    tmp = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(1)
    ckpt = tmp / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("mlp", 4, (1, 8, 8), hidden=(32,)).state_dict().items()},
              str(ckpt))
    cfg = tmp / "run.yaml"
    cfg.write_text(
        "data: {name: synthetic, batch_size: 32,\n"
        "       options: {num_classes: 4, input_shape: [1, 8, 8], n_train: 256, n_test: 128}}\n"
        f"teacher: {{model: mlp, kwargs: {{hidden: [32]}}, checkpoint: {ckpt}}}\n"
        "student: {model: mlp, kwargs: {hidden: [16]}}\n"
        "method: {name: kd, temperature: 4}\n"
        "train: {epochs: 2, lr: 0.05, optimizer: sgd, momentum: 0.9, device: cpu, precision: fp32}\n"
    )
    from kdistill.runs import run_experiment

    one = run_experiment(load_config(cfg), tmp / "one", log=lambda s: None)
    return cfg, one, tmp


@pytest.mark.slow
def test_two_fsdp_processes_match_one_and_hold_half_the_student_each(mlp_config):
    cfg, one, tmp = mlp_config
    proc = _torchrun(cfg, tmp / "fsdp", "data.batch_size=16", "train.fsdp=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one set of progress lines, from the main process (it used to be one per process)
    said = (proc.stdout + proc.stderr).splitlines()
    assert sum("epoch 2/2" in line for line in said) == 1, proc.stdout
    two = json.loads((tmp / "fsdp" / "results.json").read_text())
    assert one["distributed"] == {"processes": 1, "strategy": "none"}
    d = two["distributed"]
    assert d["processes"] == 2 and d["strategy"] == "fsdp" and d["units"] == ["MLP"]
    # every weight and bias of this MLP has an even first dimension: each process holds half
    assert d["local_param_fraction"] == pytest.approx(0.5)
    assert two["steps"] == one["steps"] == 16
    for k in ("acc", "nll", "agreement", "kl_to_teacher"):
        assert two["final"]["test"][k] == pytest.approx(one["final"]["test"][k], rel=1e-4, abs=1e-5)
    assert sorted(p.name for p in (tmp / "fsdp").iterdir()) == FILES
    # the saved student is whole (gathered from the shards) and equals the one-process student
    w2, w1 = load_file(str(tmp / "fsdp" / "model.safetensors")), load_file(str(tmp / "one" / "model.safetensors"))
    assert w2.keys() == w1.keys()
    for k in w1:
        assert w2[k].shape == w1[k].shape
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp_resume_from_the_first_epoch_ends_where_the_straight_run_ends(mlp_config):
    """The checkpoint after epoch 1 holds full weights and the name-keyed optimizer state
    (SGD momentum): resuming from it must reproduce the straight run's epoch 2."""
    cfg, _, tmp = mlp_config
    straight = tmp / "fsdp_straight"
    proc = _torchrun(cfg, straight, "data.batch_size=16", "train.fsdp=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = json.loads((straight / "results.json").read_text())
    resumed = tmp / "fsdp_resumed"
    shutil.copytree(straight, resumed)
    ckpts = sorted((resumed / "checkpoints").glob("last-*"))
    assert [p.name for p in ckpts] == ["last-000000008", "last-000000016"]
    shutil.rmtree(ckpts[-1])
    (resumed / "results.json").unlink()
    ts = torch.load(ckpts[0] / "train_state.pt", weights_only=True)
    assert ts["optimizer_format"] == "fsdp-full"
    assert "student.net.0.weight" in ts["optimizer"]["state"] or any(
        k.startswith("student.") for k in ts["optimizer"]["state"])
    proc = _torchrun(cfg, resumed, "data.batch_size=16", "train.fsdp=true", resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming from" in proc.stdout + proc.stderr
    again = json.loads((resumed / "results.json").read_text())
    for k in ("acc", "nll", "kl_to_teacher"):
        assert again["final"]["test"][k] == pytest.approx(ref["final"]["test"][k], rel=1e-5, abs=1e-6)

    # the same checkpoint in a one-process run: refused, saying why and what to do
    proc = subprocess.run([sys.executable, "-m", "kdistill.cli", "train", str(cfg), "--run-dir", str(resumed),
                           "--resume"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "written by a sharded (train.fsdp) run" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_fsdp_with_a_conv_student_batchnorm_channels_last_and_a_first_stage(tmp_path):
    """A resnet student (BatchNorm, NHWC on by default for images), FitNets' first stage
    run before sharding, BasicBlocks as units of their own: trains, agrees, saves whole."""
    torch.manual_seed(2)
    ckpt = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("resnet8", 4, (1, 8, 8)).state_dict().items()}, str(ckpt))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {name: synthetic, batch_size: 16, augment: {shift: 1, flip: true},\n"
        "       options: {num_classes: 4, input_shape: [1, 8, 8], n_train: 128, n_test: 64}}\n"
        f"teacher: {{model: resnet8, checkpoint: {ckpt}}}\n"
        "student: {model: resnet8}\n"
        "method: [{name: kd}, {name: fitnet, hint_epochs: 1}]\n"
        "train: {epochs: 2, lr: 0.05, optimizer: sgd, device: cpu, precision: fp32, fsdp: true,\n"
        "        fsdp_wrap: [BasicBlock]}\n"
    )
    proc = _torchrun(cfg, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    d = res["distributed"]
    assert d["strategy"] == "fsdp" and d["units"][1:] == ["BasicBlock"]
    assert 0.45 < d["local_param_fraction"] < 0.6  # odd first dimensions leave a little more on one
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows if "phase" in r] == ["fitnet_hint"]
    assert all(r["phase_loss"] == r["phase_loss"] for r in rows if "phase" in r)  # finite, not NaN
    student = create_model("resnet8", 4, (1, 8, 8))
    student.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")))  # whole, plain tensors
    assert 0.0 <= res["final"]["test"]["acc"] <= 1.0 and res["final"]["test"]["nll"] == res["final"]["test"]["nll"]


def test_fsdp_settings_are_checked():
    with pytest.raises(ValueError, match="does not combine with train.compile"):
        TrainConfig(fsdp=True, compile=True)
    with pytest.raises(ValueError, match="needs train.fsdp: true"):
        TrainConfig(fsdp_wrap=["BasicBlock"])
    with pytest.raises(ConfigError, match="fsdp"):
        load_config(None, ["student.model=mlp", "train.fsdp=true", "train.compile=true"])


def test_fsdp_units_are_the_student_and_named_classes_that_exist():
    plugin = sharding.make_plugin()
    acc = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
    student = create_model("resnet8", 4, (1, 8, 8))
    d = create("ce", student)
    assert sharding.set_units(acc, d, student, ["BasicBlock"]) == [type(student).__name__, "BasicBlock"]
    assert plugin.transformer_cls_names_to_wrap == [type(student).__name__, "BasicBlock"]
    with pytest.raises(ConfigError, match=r"\['Bottleneck'\].*not module classes of this model"):
        sharding.set_units(acc, d, student, ["Bottleneck"])


def test_working_copy_shares_the_teacher_and_copies_the_rest():
    teacher = ModuleTeacher(nn.Linear(4, 3), 3)
    d = create("kd", nn.Linear(4, 3), teacher)
    c = sharding.working_copy(d)
    assert c.teacher is d.teacher
    assert c.student is not d.student and c.student.weight is not d.student.weight
    torch.testing.assert_close(c.student.weight, d.student.weight)


def test_one_process_with_fsdp_trains_unsharded_and_says_so(tmp_path):
    data = load_dataset("synthetic", num_classes=4, input_shape=[8], n_train=64, n_test=32)
    said = []
    t = Trainer(create("ce", nn.Linear(8, 4)), data.train, {"test": data.test},
                TrainConfig(epochs=1, device="cpu", fsdp=True), tmp_path, batch_size=32, log=said.append)
    res = t.fit()
    assert res["distributed"] == {"processes": 1, "strategy": "none"}
    assert any("nothing to shard" in s for s in said)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_first_stage_leaves_every_process_with_the_one_process_network(tmp_path, strategy):
    """First stages (here FitNets' hint stage) run before the DDP/FSDP wrapper, on the whole
    training set at the global batch on every process: the 2-process run then ends where
    the 1-process run ends (before, each DDP replica trained its stage on its own shard
    without exchanging gradients, and the replicas drifted apart)."""
    from kdistill.runs import run_experiment

    torch.manual_seed(3)
    ckpt = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("mlp", 4, (1, 8, 8), hidden=(32,)).state_dict().items()},
              str(ckpt))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {name: synthetic, batch_size: 32,\n"
        "       options: {num_classes: 4, input_shape: [1, 8, 8], n_train: 256, n_test: 128}}\n"
        f"teacher: {{model: mlp, kwargs: {{hidden: [32]}}, checkpoint: {ckpt}}}\n"
        "student: {model: mlp, kwargs: {hidden: [16]}}\n"
        "method: [{name: kd}, {name: fitnet, hint_epochs: 2, weight: 0.1}]\n"
        "train: {epochs: 2, lr: 0.01, optimizer: sgd, device: cpu, precision: fp32, grad_clip: 5}\n"
    )
    one = run_experiment(load_config(cfg), tmp_path / "one", log=lambda s: None)
    proc = _torchrun(cfg, tmp_path / "two", "data.batch_size=16", f"train.fsdp={str(strategy == 'fsdp').lower()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["distributed"]["strategy"] == strategy
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    rows1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    stage2, stage1 = [r for r in rows if "phase" in r], [r for r in rows1 if "phase" in r]
    assert len(stage2) == len(stage1) == 2  # logged once, by the main process
    for a, b in zip(stage2, stage1, strict=True):
        assert a["phase_loss"] == pytest.approx(b["phase_loss"], rel=1e-5)
    for k in ("acc", "nll", "kl_to_teacher"):
        assert two["final"]["test"][k] == pytest.approx(one["final"]["test"][k], rel=1e-4, abs=1e-5)


def test_a_first_stage_leaves_no_gradient_for_the_main_training(tmp_path):
    """Stage gradients left on the parameters used to be added to the main training's
    first step (the trainer zeroes after stepping); stages now clear them."""
    from kdistill.engine.phases import run_first_phases

    data = load_dataset("synthetic", num_classes=4, input_shape=[1, 8, 8], n_train=64, n_test=32)
    torch.manual_seed(0)
    d = create([{"name": "kd"}, {"name": "fitnet", "hint_epochs": 1}], create_model("resnet8", 4, (1, 8, 8)),
               ModuleTeacher(create_model("resnet8", 4, (1, 8, 8)), 4), example=data.train.x[:8])
    before = {n: p.detach().clone() for n, p in d.named_parameters()}
    t = Trainer(d, data.train, {"test": data.test}, TrainConfig(epochs=1, device="cpu", optimizer="sgd", lr=0.01),
                tmp_path, batch_size=16, log=lambda s: None)
    rows = run_first_phases(t)
    assert [r["phase"] for r in rows] == ["fitnet_hint"]
    assert any(not torch.equal(before[n], p) for n, p in d.named_parameters())  # the stage trained
    assert all(p.grad is None for p in d.parameters())


@pytest.mark.slow
def test_sigterm_stops_every_fsdp_process_at_one_step_and_the_resumed_run_ends_like_a_straight_one(tmp_path):
    """A checkpoint is a collective under FSDP: the processes agree on a stop (every
    train.log_every steps) and save together; resuming then reproduces the straight run."""
    import signal
    import time

    torch.manual_seed(4)
    ckpt = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("mlp", 4, (1, 8, 8), hidden=(32,)).state_dict().items()},
              str(ckpt))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {name: synthetic, batch_size: 16,\n"
        "       options: {num_classes: 4, input_shape: [1, 8, 8], n_train: 4096, n_test: 128}}\n"
        f"teacher: {{model: mlp, kwargs: {{hidden: [32]}}, checkpoint: {ckpt}}}\n"
        "student: {model: mlp, kwargs: {hidden: [16]}}\n"
        "method: {name: kd}\n"
        "train: {epochs: 8, lr: 0.02, optimizer: sgd, device: cpu, precision: fp32, fsdp: true, log_every: 5,\n"
        "        progress: false}\n"
    )
    run = tmp_path / "stopped"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "kdistill.cli", "train", str(cfg), "--run-dir", str(run)]
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    out, err = proc.communicate(timeout=120)
    assert not (run / "results.json").exists(), "the run finished before the signal: make it longer"
    said = [line for line in (out + err).splitlines() if "Stopped by SIGTERM" in line]
    assert len(said) == 2, out + err
    paths = {line.split("checkpoint saved at ")[1].split(". Resume")[0] for line in said}
    assert len(paths) == 1 and "None" not in paths  # both stopped at the same step, and say where
    saved = Path(paths.pop())
    step = int(saved.name.split("-")[1])
    # agreed every train.log_every (5) steps, or at an epoch's end (4096 / 32 = 128 steps)
    assert saved.is_dir() and (step % 5 == 0 or step % 128 == 0), step

    resumed = subprocess.run(args + ["--resume"], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = _torchrun(cfg, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = json.loads((run / "results.json").read_text())
    b = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert a["steps"] == b["steps"]
    for k in ("acc", "nll", "kl_to_teacher"):
        assert a["final"]["test"][k] == pytest.approx(b["final"]["test"][k], rel=1e-5, abs=1e-6)
    # the record too: the stopped epoch's train_loss averages all its batches on every process
    # (each process's running sums are in the checkpoint), not only those after the resume
    rows_a, rows_b = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                      for d in (run, tmp_path / "straight"))
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_reading_a_teacher_cache_of_augmented_views_match_one(tmp_path, strategy):
    """teacher.cache under DDP/FSDP: each process reads its shard's stored views (the
    augmentation the teacher saw), so 2 processes end where 1 process ends."""
    from kdistill.runs import run_experiment

    torch.manual_seed(5)
    ckpt = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("mlp", 4, (1, 8, 8), hidden=(32,)).state_dict().items()},
              str(ckpt))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {name: synthetic, batch_size: 32, augment: {shift: 1, flip: true},\n"
        "       options: {num_classes: 4, input_shape: [1, 8, 8], n_train: 256, n_test: 128}}\n"
        f"teacher: {{model: mlp, kwargs: {{hidden: [32]}}, checkpoint: {ckpt}}}\n"
        "student: {model: mlp, kwargs: {hidden: [16]}}\n"
        "method: {name: kd, temperature: 4}\n"
        "train: {epochs: 2, lr: 0.05, optimizer: sgd, device: cpu, precision: fp32}\n"
    )
    made = subprocess.run([sys.executable, "-m", "kdistill.cli", "cache-teacher", str(cfg), "--out",
                           str(tmp_path / "cache"), "--views", "2"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    cached = [f"teacher.cache={tmp_path / 'cache'}", "teacher.model=null", "teacher.checkpoint=null",
              "teacher.kwargs={}"]
    cfg1 = load_config(cfg, cached)
    one = run_experiment(cfg1, tmp_path / "one", log=lambda s: None)
    proc = _torchrun(cfg, tmp_path / "two", *cached, "data.batch_size=16",
                     f"train.fsdp={str(strategy == 'fsdp').lower()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["distributed"]["strategy"] == strategy and two["teacher"]["cache"] == str(tmp_path / "cache")
    for k in ("acc", "nll", "agreement", "kl_to_teacher"):
        assert two["final"]["test"][k] == pytest.approx(one["final"]["test"][k], rel=1e-4, abs=1e-5)


def test_fused_optimizers_on_cpu_but_not_for_fsdp_shards():
    """Fused optimizer kernels run on CPU too; FSDP shards (DTensors) get the foreach ones,
    since torch has no DTensor rule for the fused SGD kernel (an FSDP run failed with it)."""
    from kdistill.engine.trainer import make_optimizer

    cpu = torch.device("cpu")
    for opt in ("sgd", "adamw", "adam"):
        params = list(nn.Linear(4, 3).parameters())
        assert make_optimizer(params, TrainConfig(optimizer=opt), cpu).defaults["fused"] is True
        assert not make_optimizer(params, TrainConfig(optimizer=opt), cpu, sharded=True).defaults.get("fused")


def test_the_accelerator_lets_go_of_a_finished_run(tmp_path):
    """Accelerate keeps every prepared model: after fit it must hold none of them (a study or
    a scheme runs many fits in one process; sharded modules alive at exit can abort it)."""
    data = load_dataset("synthetic", num_classes=4, input_shape=[8], n_train=64, n_test=32)
    t = Trainer(create("ce", nn.Linear(8, 4)), data.train, {"test": data.test}, TrainConfig(epochs=1, device="cpu"),
                tmp_path, batch_size=32, log=lambda s: None)
    t.fit()
    assert t.accelerator._models == [] and t.accelerator._optimizers == []


def test_feature_taps_hold_no_graph_between_steps():
    """The distiller copies what its taps recorded and clears them: the last step's
    features (and the graph behind them) are not kept alive until the next step."""
    torch.manual_seed(0)
    data = load_dataset("synthetic", num_classes=4, input_shape=[1, 8, 8], n_train=32, n_test=8)
    d = create("fitnet", create_model("resnet8", 4, (1, 8, 8)), ModuleTeacher(create_model("resnet8", 4, (1, 8, 8)), 4),
               example=data.train.x[:8])
    ctx = d.context({"x": data.train.x[:8], "y": data.train.y[:8], "index": torch.arange(8)})
    assert ctx.student_features and all(f.grad_fn is not None for f in ctx.student_features.values())
    assert d._taps.features == {}


DDP_BN_SCRIPT = """
import json, os, sys, torch
from kdistill.config import TrainConfig
from kdistill.data import load_dataset
from kdistill.engine.trainer import Trainer
from kdistill.methods import create
from kdistill.models import create_model

torch.manual_seed(0)
data = load_dataset("synthetic", num_classes=4, input_shape=[1, 8, 8], n_train=128, n_test=64)
out = sys.argv[1]
t = Trainer(create("ce", create_model("resnet8", 4, (1, 8, 8))), data.train, {"test": data.test},
            TrainConfig(epochs=1, lr=0.05, optimizer="sgd", device="cpu", precision="fp32", progress=False),
            os.path.join(out, "run"), batch_size=16, log=lambda s: None)
res = t.fit()
bn = {k: v.tolist() for k, v in t.distiller.student.state_dict().items() if "running" in k}
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"final": res["final"], "bn": bn}, f)
"""


def test_ddp_processes_leave_fit_with_the_main_process_model(tmp_path):
    """Under DDP each process's BatchNorm running statistics last saw its own batch; the
    trainer evaluates every process on rank 0's, so all of them report the same metrics and
    hold the model the main process saves (a scheme's next stage runs on all of them)."""
    _run_on_two_processes(DDP_BN_SCRIPT, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["bn"].keys() == r1["bn"].keys() and r0["bn"]
    for k in r0["bn"]:
        torch.testing.assert_close(torch.tensor(r1["bn"][k]), torch.tensor(r0["bn"][k]), rtol=0, atol=0)
    assert r0["final"] == r1["final"]


def test_only_the_main_process_writes_run_records(tmp_path, monkeypatch):
    """A scheme's results, study and stage files come from the main process alone (they were
    written by every process, so the file held whichever one finished last)."""
    from kdistill.runs import write_json

    monkeypatch.setenv("RANK", "1")
    write_json(tmp_path / "results.json", {"rank": 1})
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setenv("RANK", "0")
    write_json(tmp_path / "results.json", {"rank": 0})
    assert json.loads((tmp_path / "results.json").read_text()) == {"rank": 0}


CRD_SCRIPT = """
import json, os, sys, torch
from kdistill.config import TrainConfig
from kdistill.data import load_dataset
from kdistill.engine.trainer import Trainer
from kdistill.methods import create
from kdistill.models import create_model
from kdistill.teachers import ModuleTeacher

torch.manual_seed(0)
data = load_dataset("synthetic", num_classes=4, input_shape=[1, 8, 8], n_train=96, n_test=32)
out, fsdp = sys.argv[1], sys.argv[2] == "fsdp"
d = create("crd", create_model("mlp", 4, (1, 8, 8), hidden=(16,)),
           ModuleTeacher(create_model("mlp", 4, (1, 8, 8), hidden=(32,)), 4),
           example=data.train.x[:8], num_data=96, num_negatives=8, embed_dim=8)
term = d.terms[0]
init = term.memory_s.clone()
t = Trainer(d, data.train, {"test": data.test},
            TrainConfig(epochs=1, lr=0.05, optimizer="sgd", device="cpu", precision="fp32", progress=False, fsdp=fsdp),
            os.path.join(out, "run"), batch_size=16, log=lambda s: None)
t.fit()
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"init": init.tolist(), "memory_s": term.memory_s.tolist(), "memory_t": term.memory_t.tolist(),
               "z": term.z.tolist()}, f)
"""


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_crd_memory_banks_hold_every_process_batch(tmp_path, strategy):
    """CRD's banks keep one embedding per training sample. On 2 processes each process
    updates its banks with both processes' batches, so after one epoch every row has moved
    (re-normalised to unit length), on both processes alike, and Z is the same everywhere.
    (DDP used to broadcast process 0's banks every step, dropping process 1's updates; under
    FSDP each process kept only its own rows.)"""
    _run_on_two_processes(CRD_SCRIPT, tmp_path, strategy)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for k in ("memory_s", "memory_t", "z"):
        torch.testing.assert_close(torch.tensor(r1[k]), torch.tensor(r0[k]), rtol=0, atol=0)
    m, init = torch.tensor(r0["memory_s"]), torch.tensor(r0["init"])
    torch.testing.assert_close(m.norm(dim=1), torch.ones(96), rtol=0, atol=1e-5)
    assert not (init.norm(dim=1) - 1).abs().lt(1e-5).any()  # no row started at unit length
    assert (m - init).abs().amax(dim=1).gt(0).all()


GATHER_SCRIPT = """
import json, os, sys, torch
import torch.distributed as dist
from kdistill.distributed import gather_rows, mean_over_processes, world_size

dist.init_process_group("gloo")
r = dist.get_rank()
x = torch.arange(r + 2, dtype=torch.float32)[:, None] + 10 * r  # rank 0: 2 rows, rank 1: 3
i = torch.arange(r + 2) + 100 * r
gx, gi = gather_rows(x, i)
mean = mean_over_processes(torch.tensor(float(r)))
with open(os.path.join(sys.argv[1], f"rank{r}.json"), "w") as f:
    json.dump({"world": world_size(), "x": gx.tolist(), "i": gi.tolist(), "mean": float(mean)}, f)
dist.destroy_process_group()
"""


def test_gather_rows_across_processes_of_unequal_batches(tmp_path):
    """gather_rows: every process gets all rows in rank order, also when the processes'
    batches differ in length; mean_over_processes averages a value over them."""
    from kdistill.distributed import gather_rows, mean_over_processes, world_size

    t = torch.ones(3, 2)
    assert world_size() == 1 and gather_rows(t)[0] is t and mean_over_processes(t) is t  # no process group
    _run_on_two_processes(GATHER_SCRIPT, tmp_path)
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got == {"world": 2, "x": [[0.0], [1.0], [10.0], [11.0], [12.0]], "i": [0, 1, 100, 101, 102],
                       "mean": 0.5}
