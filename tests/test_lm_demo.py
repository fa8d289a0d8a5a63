"""``kdistill demo --lm``: the whole demo on a few KB of text with tiny models (a teacher,
then four students from one shared teacher cache), and its errors for a missing corpus."""

from __future__ import annotations

import json
import math
import random

import pytest

pytest.importorskip("transformers")

from rich.console import Console  # noqa: E402

from kdistill.cli import main  # noqa: E402
from kdistill.demo import LM_STAGES, print_lm_demo_table, run_lm_demo  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 4 KB of fortune-like text: documents split by ``%`` lines."""
    rng = random.Random(0)
    words = "a fool and his money are soon parted but the wise man keeps a cat on the mat".split()
    path = tmp_path_factory.mktemp("text") / "fortunes.txt"
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(8)) + ".\n%\n" for _ in range(100)))
    return path


def test_lm_demo_runs_five_models_from_one_cache(corpus, tmp_path):
    lines: list[str] = []
    res = run_lm_demo(tmp_path, corpus=corpus, teacher_layers=1, epochs=1, teacher_epochs=2, teacher_width=32,
                      student_width=16, block_size=32, cache_k=8, sample_prompts=[], log=lines.append)
    root = tmp_path / res["run_dir"].rsplit("/", 1)[-1]
    assert json.loads((root / "results.json").read_text()) == res
    runs = res["runs"]
    assert list(runs) == list(LM_STAGES) == ["teacher", "ce", "forward_kl", "reverse_kl", "gkd"]
    assert all(math.isfinite(r["val_ppl"]) and r["val_ppl"] > 1 for r in runs.values())
    assert runs["teacher"]["val_ppl"] < res["uniform_ppl"] == 257  # the teacher learnt something
    assert runs["teacher"]["layers"] == 1 and runs["ce"]["params"] < runs["teacher"]["params"]
    assert runs["teacher"]["agreement"] is None
    assert all(0 <= runs[n]["agreement"] <= 1 for n in LM_STAGES[1:])  # the student alone too, afterwards
    # one cache, written by the first cached student and read by the other two
    assert res["cache"]["written"] == 1 and res["cache"]["reused"] == 2
    metas = [p for p in root.rglob("meta.json") if "kdistill-lm-topk" in p.read_text()]
    assert [p.parent.name for p in metas] == ["cache-k8"]
    assert not (root / "ce" / "teacher_cache").exists()
    assert len((root / "metrics.jsonl").read_text().splitlines()) == 2 + 4  # teacher 2 epochs, students 1
    assert sum(line.startswith("[") for line in lines) == 5
    console = Console(record=True, width=200)
    print_lm_demo_table(res, console)
    table = console.export_text()
    assert "student, GKD" in table and "student, reverse KL" in table
    # the caption wraps at the table's width, which the corpus path's length changes
    assert "uniform guess" in " ".join(table.split())


def test_lm_demo_missing_corpus_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("kdistill.lm.suite.FORTUNES", str(tmp_path / "no-fortunes"))
    assert main(["demo", "--lm", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "apt-get install fortunes-min" in err and "--corpus PATH" in err
    assert not (tmp_path / "runs").exists()  # nothing made before the check
    assert main(["demo", "--lm", "--corpus", str(tmp_path / "none.txt"), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none.txt" in err
    assert main(["demo", "--teacher-layers", "2"]) == 2  # an --lm option without --lm
    assert "--lm" in capsys.readouterr().err
