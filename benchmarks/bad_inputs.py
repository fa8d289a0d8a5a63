"""Feed `kdistill train` the mistakes a new user makes, and record how each is reported.

    python benchmarks/bad_inputs.py [--only NAME] [--timeout 120]

Every case runs the CLI in a fresh process (as a user would), from a scratch folder that
holds the user's own data (``data.npz``) and model code (``mypkg/nets.py``, found without
``PYTHONPATH=.``). A case records the exit code, the first line of the message, the wall
time and whether a Python traceback appeared; the table goes to benchmarks/BAD_INPUTS.md.

The model/method/tap/kwargs cases start from examples/fashion_mnist_kd.yaml, whose teacher
(convnet4, 10 epochs on 54,000 images) takes minutes on a 2-core CPU: a case that is only
reported after the teacher trained shows up as a time-out.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FASHION = str(ROOT / "examples" / "fashion_mnist_kd.yaml")

NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    """A nested custom model without declared taps (stages of blocks, then a head)."""

    def __init__(self, num_classes=10, width=32):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.stages = nn.Sequential(
            nn.Sequential(nn.Linear(64, width), nn.ReLU()),
            nn.Sequential(nn.Linear(width, width), nn.ReLU()),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.backbone.stages(x.flatten(1)))


def big(num_classes=10, width=64):
    return Net(num_classes, width)


def small(num_classes=10, width=8):
    return Net(num_classes, width)
'''

OWN = """
data: {name: npz, options: {path: data.npz}, batch_size: 64}
teacher: {model: "mypkg.nets:big", train: {epochs: 3}}
student: {model: "mypkg.nets:small"}
method: {name: kd}
train: {epochs: 2, device: cpu}
output: {dir: runs}
"""


def write_user_folder(folder: Path) -> None:
    """The user's own data (digits-like: 8x8 = 64 features, 10 classes) and model code,
    plus broken variants of the data."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 64)).astype(np.float32) * 2

    def make(n):
        y = rng.integers(0, 10, n)
        return (centres[y] + rng.normal(size=(n, 64))).astype(np.float32), y.astype(np.int64)

    xtr, ytr = make(600)
    xte, yte = make(200)
    np.savez(folder / "data.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    np.savez(folder / "data_60.npz", x_train=xtr, y_train=ytr, x_test=xte[:, :60], y_test=yte)
    yneg = ytr.copy()
    yneg[5] = -1
    np.savez(folder / "data_neg.npz", x_train=xtr, y_train=yneg, x_test=xte, y_test=yte)
    ybig = yte.copy()
    ybig[3] = 12
    np.savez(folder / "data_big.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=ybig, num_classes=10)
    np.savez(folder / "transfer.npz", x=xtr[:100])
    np.savez(folder / "data_noy.npz", x_train=xtr, x_test=xte, y_test=yte)
    xnan = xtr.copy()
    xnan[7, 3] = np.nan
    np.savez(folder / "data_nan.npz", x_train=xnan, y_train=ytr, x_test=xte, y_test=yte)
    (folder / "mypkg").mkdir()
    (folder / "mypkg" / "__init__.py").write_text("")
    (folder / "mypkg" / "nets.py").write_text(NETS)
    (folder / "own.yaml").write_text(OWN)
    (folder / "scheme.yaml").write_text(OWN + "scheme: {name: takd, chain: [\"mypkg.nets:big\", convnet99, \"mypkg.nets:small\"]}\n")
    (folder / "bad.yaml").write_text("data: {name: npz\nstudent: [")
    (folder / "list.yaml").write_text("- a\n- b\n")
    (folder / "notes.txt").write_text("not weights")
    import torch

    torch.save({"state_dict": {"w": torch.zeros(3)}, "opt": object()}, folder / "pickled.pt")
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(3, 3)}, str(folder / "other.safetensors"))
    # a trained-elsewhere teacher whose head has 1000 classes (an ImageNet head)
    sys.path.insert(0, str(folder))
    from mypkg.nets import big  # noqa: E402

    sd = {f"module.{k}": v for k, v in big(num_classes=1000).state_dict().items()}
    save_file(sd, str(folder / "teacher_1000.safetensors"))
    sys.path.pop(0)


# (name, what the user did, config, extra arguments)
CASES: list[tuple[str, str, str, list[str]]] = [
    ("unknown-student", "unknown student model name", FASHION, ["--set", "student.model=convnet99"]),
    ("unknown-teacher", "unknown teacher model name", FASHION, ["--set", "teacher.model=resnet_huge"]),
    ("unknown-method", "unknown method name", FASHION, ["--set", "method.name=kdd"]),
    ("bad-temperature", "method temperature -1", FASHION, ["--set", "method.temperature=-1"]),
    ("bad-alpha", "method alpha 1.5", FASHION, ["--set", "method.alpha=1.5"]),
    ("bad-alpha-type", "method alpha 'high'", FASHION, ["--set", "method.alpha=high"]),
    ("student-kwargs", "student kwargs key that the model lacks", FASHION, ["--set", "student.kwargs={widht: 8}"]),
    ("teacher-kwargs", "teacher kwargs value of the wrong kind", FASHION, ["--set", "teacher.kwargs={width: -4}"]),
    ("method-setting", "method setting that does not exist", FASHION, ["--set", "method.temprature=4"]),
    ("tap-path", "feature method with a wrong tap path", FASHION,
     ["--set", "method={name: at, student_layers: [features.9], teacher_layers: [features.3]}"]),
    ("tap-string", "tap list given as a string (a wrong path)", FASHION,
     ["--set", "method.name=fitnet", "--set", "method.student_layers=backbone.stages.1.block"]),
    ("tap-index", "tap with [i] indexing past the end", "own.yaml",
     ["--set", "method={name: fitnet, student_layers: 'backbone.stages[5]', teacher_layers: 'backbone.stages[1]'}"]),
    ("at-custom-model", "feature method on a custom model without declared stages", "own.yaml",
     ["--set", "method.name=at"]),
    ("epochs-0", "train.epochs 0", FASHION, ["--set", "train.epochs=0"]),
    ("teacher-epochs-0", "teacher.train.epochs 0 and no checkpoint", FASHION, ["--set", "teacher.train.epochs=0"]),
    ("x-test-60", "x_test with 60 features, x_train with 64", "own.yaml", ["--set", "data.options.path=data_60.npz"]),
    ("label-minus-1", "a label -1 in the user's training labels", "own.yaml", ["--set", "data.options.path=data_neg.npz"]),
    ("label-too-big", "a test label 12 with 10 classes", "own.yaml",
     ["--set", "data.options={path: data_big.npz, num_classes: 10}"]),
    ("nan-input", "a NaN in the training inputs", "own.yaml", ["--set", "data.options.path=data_nan.npz"]),
    ("npz-missing", "the .npz file does not exist", "own.yaml", ["--set", "data.options.path=nope.npz"]),
    ("npz-no-y", "the .npz lacks y_train", "own.yaml", ["--set", "data.options.path=data_noy.npz"]),
    ("dataset-unknown", "unknown dataset name", "own.yaml", ["--set", "data.name=cifar11"]),
    ("config-missing", "config file that does not exist", "nope.yaml", []),
    ("config-yaml", "config that is not valid YAML", "bad.yaml", []),
    ("config-list", "config that is a list, not a mapping", "list.yaml", []),
    ("unknown-key", "misspelt key train.epoch", FASHION, ["--set", "train.epoch=3"]),
    ("wrong-type", "train.lr=abc", FASHION, ["--set", "train.lr=abc"]),
    ("set-no-equals", "--set without '='", FASHION, ["--set", "train.epochs"]),
    ("factory-missing", "own factory that does not exist", "own.yaml", ["--set", "student.model=mypkg.nets:tiny"]),
    ("module-missing", "own module that does not exist", "own.yaml", ["--set", "student.model=mypkg.netz:small"]),
    ("factory-kwargs", "own factory with a keyword it does not take", "own.yaml",
     ["--set", "student.kwargs={depth: 3}"]),
    ("ckpt-missing", "teacher checkpoint file that does not exist", "own.yaml",
     ["--set", "teacher.checkpoint=teacher.safetensors"]),
    ("ckpt-not-weights", "teacher checkpoint that is a text file", "own.yaml", ["--set", "teacher.checkpoint=notes.txt"]),
    ("ckpt-pickle", "teacher checkpoint that needs pickle", "own.yaml", ["--set", "teacher.checkpoint=pickled.pt"]),
    ("ckpt-other-arch", "teacher checkpoint of another architecture", "own.yaml",
     ["--set", "teacher.checkpoint=other.safetensors"]),
    ("ckpt-1000-classes", "teacher checkpoint with a 1000-class head (module. prefix)", "own.yaml",
     ["--set", "teacher.checkpoint=teacher_1000.safetensors"]),
    ("transfer-no-teacher", "transfer set without a teacher", "own.yaml",
     ["--set", "teacher=null", "--set", "data.transfer={source: npz, path: transfer.npz}"]),
    ("scheme-unknown", "unknown scheme name", "own.yaml", ["--set", "scheme={name: takdd}"]),
    ("scheme-model", "scheme chain with an unknown model", "scheme.yaml", []),
    ("hf-missing", "hf: teacher folder that does not exist", "own.yaml", ["--set", "teacher.model=hf:no/such/folder"]),
    ("device-cuda", "train.device cuda on a machine without one", "own.yaml", ["--set", "train.device=cuda"]),
    ("terms-twice", "the same method term listed twice", "own.yaml",
     ["--set", "method=[{name: kd}, {name: kd, weight: 0.5}]"]),
    ("layers-length", "2 student layers paired with 1 teacher layer", "own.yaml",
     ["--set", "method={name: fitnet, student_layers: [backbone.stages.0, backbone.stages.1], "
               "teacher_layers: [backbone.stages.1]}"]),
    ("teacher-input-bad", "teacher.input.channels 3 for vector data", "own.yaml",
     ["--set", "teacher.input={channels: 3}"]),
    ("resume-nothing", "--resume of a run that never started", "own.yaml",
     ["--resume", "--run-dir", "runs/never"]),
]


#: the mistakes the issue asks to be reported within seconds, with a teacher that takes minutes
FAST = {"unknown-student", "unknown-teacher", "unknown-method", "bad-temperature", "bad-alpha", "bad-alpha-type",
        "student-kwargs", "teacher-kwargs", "method-setting", "tap-path", "tap-string"}


def first_line(text: str) -> str:
    """The first line of the message (with the next one when it ends in ':')."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith((" ", "Checking", "Loaded")):
            continue
        line = line.strip()
        return f"{line} {lines[i + 1].strip()}" if line.endswith(":") and i + 1 < len(lines) else line
    return ""


def run_case(folder: Path, cfg: str, args: list[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               COLUMNS="400", NO_COLOR="1")
    cmd = [sys.executable, "-m", "kdistill.cli", "train", cfg, *args]
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", e.stderr or ""
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    secs = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    text = err + "\n" + out
    msg = first_line(err) or first_line(out)
    return {"rc": rc, "seconds": secs, "cpu": cpu, "traceback": "Traceback (most recent call last)" in text, "message": msg}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run only the cases whose name contains this")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--out", default=str(HERE / "BAD_INPUTS.md"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_user_folder(folder)
        for name, what, cfg, extra in CASES:
            if args.only and args.only not in name:
                continue
            r = run_case(folder, cfg, extra, args.timeout)
            rows.append((name, what, r))
            print(f"{name:20s} rc={r['rc']!s:7s} {r['seconds']:6.1f}s cpu {r['cpu']:5.1f}s tb={r['traceback']!s:5s} {r['message'][:150]}",
                  flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()[0]
    tbs = sum(r["traceback"] for _, _, r in rows)
    zero = sum(r["rc"] == 0 for _, _, r in rows)
    lines = [
        "# Bad inputs: how `kdistill train` reports a user's mistakes",
        "",
        f"`python benchmarks/bad_inputs.py` at commit `{commit}` ({platform.machine()}, "
        f"{os.cpu_count()}-core CPU, load average {load:.1f} at the end; the machine was shared). "
        f"{len(rows)} cases, {tbs} with a traceback, {zero} exiting 0. Every case is a fresh "
        "`kdistill train` process (Python and torch start-up included). Wall seconds depend on "
        "the load of the shared machine; CPU seconds (user + system of the process) do not, much.",
        "",
        "| case | the mistake | exit | wall s | CPU s | traceback | first line of the message |",
        "|---|---|---|---|---|---|---|",
    ]
    fast = [r for name, _, r in rows if name in FAST]
    if fast:
        lines[2] += (f" The {len(fast)} model/method/tap/kwargs mistakes on the Fashion-MNIST config (whose "
                     "teacher, convnet4 for 10 epochs over 54,000 images, is trained first when nothing is wrong) "
                     f"were reported after at most {max(r['cpu'] for r in fast):.1f} CPU seconds "
                     f"({max(r['seconds'] for r in fast):.1f} s wall on the loaded machine).")
    for name, what, r in rows:
        msg = r["message"].replace("|", "\\|")
        if len(msg) > 220:
            msg = msg[:217] + "..."
        lines.append(f"| {name} | {what} | {r['rc']} | {r['seconds']:.1f} | {r['cpu']:.1f} | {'yes' if r['traceback'] else 'no'} | {msg} |")
    if not args.only:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 1 if tbs or zero else 0


if __name__ == "__main__":
    sys.exit(main())
