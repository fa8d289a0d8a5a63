"""The causal-LM task through the shared seams: one config class (``task: causal-lm``), the
CLI's ``train --check``, ``compare`` (methods x seeds, perplexity mean ± std and paired
gains), ``report`` (perplexity curves, the fixed prompts' generations), ``export`` (an HF
folder that reloads to the same logits), ``profile``, ``generate``, ``eval`` and
``kd.train(..., task="causal-lm")``. Tiny Llama configs built in the process."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from kdistill.cli import main  # noqa: E402
from kdistill.config import RunConfig, load_config  # noqa: E402
from kdistill.errors import ConfigError  # noqa: E402
from kdistill.task import TASKS  # noqa: E402
from kdistill.tasks.causal_lm import LMRunConfig  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}


def raw_config(corpus, out, **over) -> dict:
    raw = {
        "task": "causal-lm",
        "data": {"train": str(corpus), "block_size": 24, "batch_size": 16, "val_split": 0.2, "separator": "%"},
        "tokenizer": "byte",
        "teacher": {"model": "hf-config", "kwargs": dict(TINY, hidden_size=32, intermediate_size=64),
                    "train": {"epochs": 1, "lr": 0.01}},
        "student": {"model": "hf-config", "kwargs": TINY},
        "method": {"name": "gkd", "beta": 0.5},
        "lm": {"prompt_tokens": 6, "max_new_tokens": 6, "sample_prompts": ["the cat"]},
        "train": {"epochs": 2, "lr": 0.01, "device": "cpu", "progress": False, "seed": 0, "deterministic": True},
        "output": {"dir": str(out), "name": "run"},
    }
    for k, v in over.items():
        raw[k] = v if not isinstance(v, dict) else {**raw.get(k, {}), **v}
    return raw


def write(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def test_one_config_class_selected_by_task(corpus, tmp_path):
    cfg = load_config(base=raw_config(corpus, tmp_path))
    assert isinstance(cfg, LMRunConfig) and isinstance(cfg, RunConfig) and cfg.task == "causal-lm"
    assert TASKS.get(cfg.task).config is LMRunConfig
    image = load_config(base={"student": {"model": "mlp"}})
    assert type(image) is RunConfig and image.task == "image-classification"
    assert "task" not in image.model_dump()  # an image run's config.yaml reads as before
    with pytest.raises(ConfigError, match="unknown task 'causal-llm'.*causal-lm"):
        load_config(base=raw_config(corpus, tmp_path, task="causal-llm"))
    with pytest.raises(ConfigError, match="scheme"):
        load_config(base=raw_config(corpus, tmp_path, scheme={"name": "takd"}))


def test_lm_perplexity_unchanged_by_the_task_seam(corpus, tmp_path):
    """The same tiny GKD run on the code before the task seam (main at 0285859) gave these
    perplexities (student and teacher); the refactor must not move them."""
    res = TASKS.get("causal-lm").run(load_config(base=raw_config(corpus, tmp_path)), log=lambda s: None)
    assert res["final"]["val"]["ppl"] == pytest.approx(67.19224733587566, rel=1e-6)
    assert res["teacher"]["val"]["ppl"] == pytest.approx(55.24404842920364, rel=1e-6)
    assert res["samples"] == [{"prompt": "the cat", "completion": "dddddd"}]
    # the teacher trained in the run is an hf: folder at RUN/teacher (beside its own metrics)
    assert (tmp_path / "run" / "teacher" / "config.json").is_file()
    assert (tmp_path / "run" / "teacher" / "metrics.jsonl").is_file()


def test_check_builds_models_and_runs_the_distiller_once(corpus, tmp_path, capsys):
    cfg = write(tmp_path / "lm.yaml", raw_config(corpus, tmp_path))
    assert main(["train", str(cfg), "--check"]) == 0
    err = capsys.readouterr().out
    assert "teacher: hf-config" in err and "untrained" in err and "gradients reach the student" in err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert main(["train", str(cfg), "--resume"]) != 0
    assert "nothing to resume" in capsys.readouterr().err
    # a student whose positions stop short of block_size: one error line, before any training
    short = write(tmp_path / "short.yaml", raw_config(corpus, tmp_path, student={"kwargs": dict(
        TINY, max_position_embeddings=16)}))
    for args in (["train", str(short), "--check"], ["train", str(short)]):
        assert main(args) != 0
        err = capsys.readouterr().err
        assert "data.block_size 24" in err and "student's position limit 16" in err
        assert "Traceback" not in err and "IndexError" not in err
    assert not (tmp_path / "run" / "teacher").exists()  # the teacher was not trained first
    small_vocab = write(tmp_path / "v.yaml", raw_config(corpus, tmp_path, student={"kwargs": dict(TINY, vocab_size=100)}))
    assert main(["train", str(small_vocab), "--check"]) != 0
    assert "vocab_size 100" in capsys.readouterr().err


@pytest.mark.slow
def test_run_folder_tools_export_profile_generate_eval(corpus, tmp_path, capsys):
    cfg = write(tmp_path / "lm.yaml", raw_config(corpus, tmp_path, train={"epochs": 1}))
    assert main(["train", str(cfg), "-q"]) == 0
    out = capsys.readouterr().out
    assert "causal-LM run" in out
    run = tmp_path / "run"
    # the teacher of the run, usable as hf:RUN/teacher by another run
    assert main(["train", str(write(tmp_path / "b.yaml", raw_config(
        corpus, tmp_path, teacher={"model": f"hf:{run / 'teacher'}"}, train={"epochs": 1},
        output={"name": "b"}))), "-q"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["format"] == "hf" and entry["parity"]["max_abs_diff"] < 1e-5
    assert entry["parity"]["top1_agreement"] == 1.0
    from transformers import AutoModelForCausalLM

    from kdistill.lm import build_causal_lm

    reloaded = AutoModelForCausalLM.from_pretrained(entry["path"]).eval()
    mine, _ = build_causal_lm(f"hf:{run / 'student'}", {}, 257)
    x = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits[..., :257], mine.eval()(x))
    assert json.loads((run / "export.json").read_text())["hf"]["path"] == entry["path"]
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run), "--format", "onnx", "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)
    assert onnx["parity"]["max_abs_diff"] < 1e-4 and onnx["parity"]["top1_agreement"] == 1.0
    import onnxruntime as ort

    # the sequence length is dynamic: a shorter prompt than the exported example gives PyTorch's logits
    session = ort.InferenceSession(onnx["path"], providers=["CPUExecutionProvider"])
    short = x[:, :7].numpy()
    torch.testing.assert_close(torch.from_numpy(session.run(None, {"input_ids": short})[0]),
                               mine(x[:, :7]).detach(), atol=1e-4, rtol=1e-4)
    assert set(json.loads((run / "export.json").read_text())) == {"hf", "onnx"}
    assert main(["export", str(run), "--format", "torchscript"]) != 0
    assert "--format hf" in capsys.readouterr().err
    assert main(["profile", str(run), "--json", "--repeats", "2", "--warmup", "0"]) == 0
    prof = json.loads(capsys.readouterr().out)
    s, t = prof["student"], prof["teacher"]
    assert s["params"] == sum(p.numel() for p in mine.parameters()) and s["bytes"] == 4 * s["params"]
    assert t["params"] > s["params"] and s["prefill_ms"] > 0 and s["per_token_ms"] >= 0
    assert (run / "profile.json").is_file()
    assert main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "6", "--json"]) == 0
    gen = json.loads(capsys.readouterr().out)
    results = json.loads((run / "results.json").read_text())
    assert gen == results["samples"]  # greedy: the completion results.json recorded
    assert main(["eval", str(run)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["val"]["nll"] == pytest.approx(results["final"]["val"]["nll"], abs=1e-9)
    # the image-only tools say what to use instead, in one line
    for args in (["quantize", str(run)], ["predict", str(run), str(tmp_path / "x.npz")]):
        assert main(args) != 0
        err = capsys.readouterr().err
        assert "not available for task 'causal-lm'" in err and "kdistill generate" in err
    # a run folder given as a model: the message names the models inside it
    wrong = write(tmp_path / "w.yaml", raw_config(corpus, tmp_path, teacher={"model": f"hf:{run}"},
                                                 output={"name": "w"}))
    assert main(["train", str(wrong), "--check"]) != 0
    assert f"hf:{run / 'student'} and hf:{run / 'teacher'}" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_methods_seeds_and_report(corpus, tmp_path, capsys):
    raw = raw_config(corpus, tmp_path, train={"epochs": 1}, data={"max_blocks": 40})
    cfg = write(tmp_path / "lm.yaml", raw)
    out = tmp_path / "grid"
    assert main(["compare", str(cfg), "--methods", "forward_kl,reverse_kl,gkd", "--seeds", "0,1,2",
                 "--out", str(out)]) == 0
    assert "── teacher: CausalLM" in capsys.readouterr().out  # the phase headings name the role
    md = (out / "compare.md").read_text()
    assert "| last ppl |" in md and "lower is better" in md
    agg = json.loads((out / "compare.json").read_text())["aggregate"]
    assert agg["headline"]["key"] == "ppl" and agg["dataset"]["task"] == "causal-lm"
    rows = {r["label"]: r for r in agg["rows"]}
    assert set(rows) == {"teacher", "scratch", "forward_kl", "reverse_kl", "gkd"}
    for name in ("forward_kl", "reverse_kl", "gkd"):
        r = rows[name]
        ppl = [json.loads((out / f"{name}-s{s}" / "results.json").read_text())["final"]["val"]["ppl"] for s in range(3)]
        scratch = [json.loads((out / f"scratch-s{s}" / "results.json").read_text())["final"]["val"]["ppl"]
                   for s in range(3)]
        assert r["last_acc"]["mean"] == pytest.approx(sum(ppl) / 3)
        assert r["last_acc"]["std"] > 0 and r["last_acc"]["half_width"] > 0
        assert r["diff_last"]["mean"] == pytest.approx(sum(a - b for a, b in zip(ppl, scratch)) / 3)
    # one teacher per seed: trained by the first cell that needs it, reused by the others
    assert rows["teacher"]["n"] == 3
    trained = [p for p in out.iterdir() if (p / "teacher" / "config.json").is_file()]
    assert sorted(p.name for p in trained) == ["forward_kl-s0", "forward_kl-s1", "forward_kl-s2"]
    gkd_cfg = yaml.safe_load((out / "gkd-s1" / "config.yaml").read_text())
    assert gkd_cfg["teacher"]["model"].endswith("forward_kl-s1/teacher")
    html = (out / "report.html").read_text()
    assert "Generations" in html and "the cat" in html and "validation perplexity" in html
    assert html.count("<td style=") == 2 * 12  # each of the 12 runs: its name, its completion of "the cat"
    for name in ("forward_kl", "reverse_kl", "gkd"):  # best: the lowest perplexity of any epoch
        curves = [[json.loads(line)["val_ppl"] for line in (out / f"{name}-s{s}" / "metrics.jsonl").read_text().splitlines()
                   if "val_ppl" in json.loads(line)] for s in range(3)]
        assert rows[name]["best_acc"]["mean"] == pytest.approx(sum(min(c) for c in curves) / 3)
        assert rows[name]["best_acc"]["mean"] <= rows[name]["last_acc"]["mean"]
    assert (out / "plots" / "learning_curves.png").is_file()
    _renders_in_chromium(out / "report.html", tmp_path)


def _renders_in_chromium(page, tmp_path):
    """The report page in a real browser: a screenshot that is not blank."""
    import shutil
    import subprocess

    from matplotlib.image import imread

    exe = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                if c and shutil.os.path.isfile(c)), None)
    if exe is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); cannot check the page renders")
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
                    "--window-size=1200,2400", f"--user-data-dir={tmp_path / 'profile'}", page.resolve().as_uri()],
                   capture_output=True, timeout=90, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    img = imread(str(shot))[..., :3]
    assert float((img.min(-1) < 0.9).mean()) > 0.02 and float(img.var()) > 1e-3


def test_kd_train_from_python_with_task(corpus, tmp_path):
    import kdistill as kd

    raw = raw_config(corpus, tmp_path, train={"epochs": 1})
    del raw["task"], raw["teacher"]
    raw["method"] = {"name": "ce"}
    res = kd.train(raw, task="causal-lm", quiet=True)
    assert res["task"] == "causal-lm" and res["final"]["val"]["ppl"] < 257
    with pytest.raises(ConfigError, match="give a config"):
        kd.train(student=torch.nn.Linear(2, 2), task="causal-lm")


def test_example_config_checks_without_training(corpus, capsys):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "lm_distill.yaml"
    assert main(["train", str(example), "--check", "--set", f"data.train={corpus}"]) == 0
    out = capsys.readouterr().out
    assert "teacher: hf-config, 722,304 parameters" in out and "student: hf-config, 74,048 parameters" in out
    assert "OK: the run can start." in out
    assert main(["train", str(example), "--check", "--set", "data.train=/nonexistent/fortunes"]) != 0
    err = capsys.readouterr().err
    assert "/nonexistent/fortunes" in err and "Traceback" not in err


def test_no_task_switch_outside_the_tasks():
    """Callers dispatch on the task registry: outside kdistill/tasks (and lm/, the causal-LM
    building blocks) no code compares a task's name or asks whether a run is an LM run."""
    import re
    from pathlib import Path

    import kdistill

    root = Path(kdistill.__file__).parent
    switch = re.compile(r"task\s*==|is_lm|[=!]=\s*['\"]causal-lm|['\"]causal-lm['\"]\s*[=!]=|in \(['\"]causal-lm")
    found = [f"{f.relative_to(root)}: {m.group(0)}" for f in root.rglob("*.py")
             if f.relative_to(root).parts[0] not in ("tasks", "lm") for m in switch.finditer(f.read_text())]
    assert found == []


def test_sweep_plans_lm_cells(corpus, tmp_path):
    """compare/sweep plan LM cells through the one config: each cell an LMRunConfig with its
    point and seed, plus the scratch student (cross-entropy alone)."""
    from kdistill.runs.grid import parse_grid, plan_sweep

    cfg = load_config(base=raw_config(corpus, tmp_path))
    cells = plan_sweep(cfg, parse_grid(["method.beta=0.1,0.9", "lm.regime=supervised,on_policy"]), [0, 1])
    points = ("beta0.1_regimesupervised", "beta0.1_regimeon_policy", "beta0.9_regimesupervised",
              "beta0.9_regimeon_policy")
    assert [c.name for c in cells[:5]] == ["scratch-s0", *(f"{p}-s0" for p in points)]
    assert all(isinstance(c.cfg, LMRunConfig) for c in cells)
    assert cells[4].cfg.method["beta"] == 0.9 and cells[4].cfg.lm.regime == "on_policy" and cells[4].cfg.train.seed == 0
    assert cells[5].cfg.method == {"name": "ce"} and cells[5].cfg.train.seed == 1
    with pytest.raises(ConfigError, match="lm.regime"):
        plan_sweep(cfg, parse_grid(["lm.regime=offline"]), [0])
