"""int8 students on real data: float student vs PTQ vs QAT (no teacher) vs QAD (teacher).

For each seed a student is distilled (KD) from one float teacher (trained once, seed 0),
then quantized four ways from the same float student: PTQ (calibration only), QAT
(fake-quant training with cross-entropy) and QAD (the same training with KD from the
float teacher), all with kdistill's defaults unless flags say otherwise. Seed 0's PTQ and
QAD students are also exported to int8 ONNX for size and ONNX Runtime latency.

    python benchmarks/quantize_int8.py --dataset fashion-mnist --seeds 0,1,2 --out benchmarks/results/quantize_int8_fmnist.json
    python benchmarks/quantize_int8.py --dataset mnist1d --seeds 0,1,2 --out benchmarks/results/quantize_int8_mnist1d.json

Prints a markdown table (mean ± sample std over seeds) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdistill.config import validate_config  # noqa: E402
from kdistill.quantize import quantize_run  # noqa: E402
from kdistill.runs import run_experiment  # noqa: E402

SETUPS = {
    "fashion-mnist": {
        "data": {"name": "fashion-mnist", "root": "/usr/share/datasets/fashion-mnist", "subset": 10000,
                 "batch_size": 64, "eval_batch_size": 500},
        # the teacher trains on 10,000 training images, each student on 5,000 (2-core CPU budget)
        "teacher": ("convnet6", {}), "student": ("convnet4", {}), "teacher_epochs": 4, "student_epochs": 3,
        "student_subset": 5000,
    },
    "mnist1d": {
        "data": {"name": "mnist1d", "batch_size": 64, "eval_batch_size": 500},
        "teacher": ("cnn1d", {"channels": 64}), "student": ("cnn1d", {"channels": 16}),
        "teacher_epochs": 30, "student_epochs": 30,
    },
}


def base_cfg(setup: dict, seed: int, out: Path, model: tuple, epochs: int) -> dict:
    return {
        "data": dict(setup["data"]),
        "student": {"model": model[0], "kwargs": model[1]},
        "method": {"name": "ce"},
        "train": {"epochs": epochs, "progress": False, "device": "cpu", "lr": 3e-3, "seed": seed},
        "output": {"dir": str(out)},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=list(SETUPS), required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--work", default=None, help="run folders (default: beside --out, ignored by git)")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2, help="QAT/QAD epochs")
    ap.add_argument("--lr", type=float, default=1e-3, help="QAT/QAD SGD learning rate")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--teacher-epochs", type=int, default=None, help="override the setup's")
    ap.add_argument("--student-epochs", type=int, default=None, help="override the setup's")
    ap.add_argument("--student-subset", type=int, default=None,
                    help="override the setup's student training subset (0: the teacher's data)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    setup = dict(SETUPS[args.dataset])
    for key in ("teacher_epochs", "student_epochs", "student_subset"):
        if getattr(args, key) is not None:
            setup[key] = getattr(args, key)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) if args.work else Path("/tmp") / f"kdistill-int8-{args.dataset}"
    work.mkdir(parents=True, exist_ok=True)
    quiet = lambda s: None
    t_start = time.time()

    teacher_dir = work / "teacher"
    if not (teacher_dir / "results.json").is_file():
        torch.manual_seed(0)
        run_experiment(validate_config(base_cfg(setup, 0, work, setup["teacher"], setup["teacher_epochs"])),
                       teacher_dir, log=quiet)
    teacher_acc = json.loads((teacher_dir / "results.json").read_text()).get("final", {}).get("test", {}).get("acc")
    print(f"teacher ready ({time.time() - t_start:.0f} s)", flush=True)

    rows = []
    for seed in seeds:
        run_dir = work / f"student-seed{seed}"
        if not (run_dir / "results.json").is_file():
            cfg = base_cfg(setup, seed, work, setup["student"], setup["student_epochs"])
            cfg["method"] = {"name": "kd"}
            if setup.get("student_subset"):
                cfg["data"]["subset"] = setup["student_subset"]
            cfg["teacher"] = {"model": setup["teacher"][0], "kwargs": setup["teacher"][1],
                              "checkpoint": str(teacher_dir / "model.safetensors")}
            torch.manual_seed(seed)
            run_experiment(validate_config(cfg), run_dir, log=quiet)
        row = {"seed": seed}
        for method in ("ptq", "qat", "qad"):
            t0 = time.time()
            res = quantize_run(run_dir, method, calib=args.calib, epochs=args.epochs, lr=args.lr, seed=seed,
                               onnx=(seed == seeds[0] and method != "qat"), log=quiet)
            row["float"] = res["test"]["acc_float"]
            row["teacher"] = res["test"].get("acc_teacher", teacher_acc)
            row[method] = res["test"]["acc_int8"]
            row[f"{method}_agree_teacher"] = res["test"].get("agreement_int8_teacher")
            row[f"{method}_agree_float"] = res["test"]["agreement_int8_float"]
            row[f"{method}_kd_teacher"] = res["test"].get("kd_int8_teacher")
            row["float_kd_teacher"] = res["test"].get("kd_float_teacher")
            row["float_agree_teacher"] = res["test"].get("agreement_float_teacher")
            row[f"{method}_s"] = time.time() - t0
            if "onnx" in res:
                row[f"{method}_onnx"] = {k: res["onnx"][k] for k in ("bytes", "float_onnx_bytes", "size_ratio",
                                                                     "latency_ms", "parity_int8_pytorch")}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_onnx")}), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps(rows, indent=2))  # survives a cut-off

    def ms(key, scale=100):
        vals = [scale * r[key] for r in rows if r.get(key) is not None]
        if not vals:
            return "-"
        return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    summary = {"dataset": args.dataset, "seeds": seeds, "setup": dict(setup),
               "calib": args.calib, "qat_epochs": args.epochs, "qat_lr": args.lr, "threads": args.threads,
               "commit": commit, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
               "wall_s": time.time() - t_start, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print("| dataset | teacher | float student | int8 PTQ | int8 QAT (CE) | int8 QAD (KD) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.dataset} | {ms('teacher')} | {ms('float')} | {ms('ptq')} | {ms('qat')} | {ms('qad')} |")
    print(f"| agreement with teacher (%) | - | {ms('float_agree_teacher')} | {ms('ptq_agree_teacher')} | "
          f"{ms('qat_agree_teacher')} | {ms('qad_agree_teacher')} |")
    print(f"| KD loss to teacher (T=4) | - | {ms('float_kd_teacher', 1)} | {ms('ptq_kd_teacher', 1)} | "
          f"{ms('qat_kd_teacher', 1)} | {ms('qad_kd_teacher', 1)} |")
    o = rows[0].get("ptq_onnx")
    if o:
        lat = o["latency_ms"]
        print(f"ONNX bytes float {o['float_onnx_bytes']:,} -> int8 {o['bytes']:,} ({o['size_ratio']:.2f}x); "
              f"ORT 1-thread p50 ms b1 {lat['b1']['float']['p50']:.3f} -> {lat['b1']['int8']['p50']:.3f}, "
              f"b64 {lat['b64']['float']['p50']:.3f} -> {lat['b64']['int8']['p50']:.3f}")


if __name__ == "__main__":
    main()
