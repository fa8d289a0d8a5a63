"""Every training scheme on 2 CPU processes (FSDP; DDP where BatchNorm makes the 1-process
run no reference) ends like the reference run. Its own file so that a parallel test run can
give these process launches a worker of their own."""

from __future__ import annotations

import json

import pytest
from test_fsdp import _torchrun

from kdistill.config import load_config

SCHEME_DATA = ("data: {name: synthetic, batch_size: 32,\n"
               "       options: {num_classes: 4, input_shape: [1, 8, 8], n_train: 256, n_test: 128}}\n")
SCHEMES = {
    # peers read apart from the group's output (DML) and exit heads made after the student's
    # output (BYOT): losses that reach the student's weights before its output does
    "dml": "student: {model: mlp, kwargs: {hidden: [16]}}\n"
           "scheme: {name: dml, peers: [{model: mlp, kwargs: {hidden: [16]}}, {model: mlp, kwargs: {hidden: [8]}}]}\n",
    "byot": "student: {model: resnet8}\nscheme: {name: byot}\n",
    # stages that read the weights an earlier stage's main process wrote
    "ensemble": "teacher: {model: mlp, kwargs: {hidden: [16]}}\nstudent: {model: mlp, kwargs: {hidden: [8]}}\n"
                "method: {name: kd}\nscheme: {name: ensemble, members: 2}\n",
    "ban": "student: {model: mlp, kwargs: {hidden: [16]}}\nmethod: {name: kd, temperature: 1.0, alpha: 1.0}\n"
           "scheme: {name: ban, generations: 2}\n",
    "one": "student: {model: resnet8}\nscheme: {name: one, branches: 2}\n",
    "specialists": "teacher: {model: mlp, kwargs: {hidden: [16]}}\nstudent: {model: mlp, kwargs: {hidden: [16]}}\n"
                   "scheme: {name: specialists, clusters: 2, top_n: 1, specialist_train: {epochs: 1}}\n",
    "takd": "student: {model: mlp, kwargs: {hidden: [8]}}\nmethod: {name: kd}\n"
            "scheme: {name: takd, chain: [{model: mlp, kwargs: {hidden: [32]}}, {model: mlp, kwargs: {hidden: [16]}},\n"
            "                             {model: mlp, kwargs: {hidden: [8]}}]}\n",
    # teacher-trained, generated (MUNGE) pseudo-data, then the student on both
    "transfer": "teacher: {model: mlp, kwargs: {hidden: [16]}}\nstudent: {model: mlp, kwargs: {hidden: [8]}}\n"
                "method: {name: kd}\nscheme: {name: transfer, generator: munge, size: 256}\n",
}
BATCHNORM = {"byot", "one"}  # resnet8


def _scheme_metrics(res: dict) -> dict[str, float]:
    if "final" in res:
        return {k: res["final"]["test"][k] for k in ("acc", "nll")}
    return {k: res["combined"]["test"][k] for k in ("generalist_acc", "combined_acc")}  # specialists


@pytest.mark.slow
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_schemes_on_two_processes_end_like_the_reference(tmp_path, scheme):
    """Each scheme on 2 processes, FSDP and DDP: both finish, with the same final metrics
    (and, without BatchNorm, the 1-process run's). BatchNorm statistics are rank 0's in both
    strategies (every process evaluates on them), so resnet8 (BYOT, ONE) is compared between
    them, not with 1 process. The transfer set's pseudo-data have no labels: each process
    averages the cross-entropy over its own labelled rows, so 2 processes end near 1, not on it."""
    from kdistill.schemes import run_scheme

    cfg = tmp_path / "run.yaml"
    cfg.write_text(SCHEME_DATA + SCHEMES[scheme] +
                   "train: {epochs: 2, lr: 0.02, optimizer: sgd, device: cpu, precision: fp32}\n")
    res = {}
    # DDP's own path is covered by test_fsdp.py; here it is the reference only where the
    # 1-process run cannot be (BatchNorm), which keeps this file's process launches down
    for strategy in (("ddp", "fsdp") if scheme in BATCHNORM else ("fsdp",)):
        proc = _torchrun(cfg, tmp_path / strategy, "data.batch_size=16", f"train.fsdp={str(strategy == 'fsdp').lower()}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        res[strategy] = json.loads((tmp_path / strategy / "results.json").read_text())
    if scheme not in BATCHNORM:
        res["one"] = run_scheme(load_config(cfg), tmp_path / "one", log=lambda s: None)
    ref = _scheme_metrics(res["ddp" if scheme in BATCHNORM else "one"])
    for name, r in res.items():
        rel = 2e-3 if scheme == "transfer" and name != "one" else 1e-4
        for k, v in _scheme_metrics(r).items():
            assert v == pytest.approx(ref[k], rel=rel, abs=1e-5), (name, k)
    if scheme == "byot":
        # the results are the main process's: its last epoch's log and the saved weights (a
        # DDP process's BatchNorm statistics last saw its own batch; the file once held
        # whichever process wrote last)
        for strategy in res:
            rows = (tmp_path / strategy / "network" / "metrics.jsonl").read_text().splitlines()
            assert res[strategy]["final"]["test"]["nll"] == pytest.approx(json.loads(rows[-1])["test_nll"], rel=1e-6)
