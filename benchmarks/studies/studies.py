"""The study definitions: which cells each benchmark runs, at the scale meant for one H100.

A *study* reproduces one claim of a seed paper on data these machines have (Fashion-MNIST
IDX files, generated MNIST-1D). It is a list of :class:`CellSpec`: each becomes one run
folder per seed (``<group>-s<seed>``), an ordinary ``kdistill`` run (``run_experiment``) or a
scheme run (``run_scheme``). Teachers are cells of their own, trained once per seed; the
cells they teach read them through ``teacher.checkpoint``.

Every config uses ``data.val_split: 0.1``: the best epoch (and the temperature the sweep
would pick) is chosen on that validation split, and the test set gives only final numbers.

``epochs`` are the full-scale values. They were sized by estimate, not measured, for an
H100 with device-resident data and bf16 (``train.precision: auto``) so that each study
takes roughly 5-8 minutes with three seeds; ``--epochs-scale`` multiplies them (at least
one epoch) and ``--max-minutes`` stops starting new cells when a budget is spent.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

#: Fashion-MNIST, 60k train (54k after the 10% validation split) / 10k test.
FMNIST = {"name": "fashion-mnist", "val_split": 0.1, "batch_size": 256, "eval_batch_size": 2048}
#: Fashion-MNIST with a fixed 2,000-image test subset (the CPU method table: evaluating the
#: full 10,000 test images twice per cell cost more than training a cell on 2,000 images)
FMNIST_SUBTEST = "fashion-mnist-subtest"


def _fashion_mnist_subtest(root: str | None = None, normalize: bool = True, pad_to: int | None = None,
                           test_size: int = 2000, test_seed: int = 0):
    """Fashion-MNIST whose test split is ``test_size`` images drawn once with ``test_seed``
    (the same images for every cell and run seed, so paired differences compare like with like)."""
    from kdistill.data import DataSplits, load_dataset, subset

    s = load_dataset("fashion-mnist", root=root, normalize=normalize, pad_to=pad_to)
    return DataSplits(s.train, subset(s.test, test_size, seed=test_seed), s.val)


def _register_sources() -> None:
    from kdistill.data import register_dataset
    from kdistill.data.datasets import DATASETS

    if FMNIST_SUBTEST not in DATASETS:
        register_dataset(FMNIST_SUBTEST)(_fashion_mnist_subtest)


_register_sources()

#: MNIST-1D (Greydanus 2020, arXiv:2011.14439): the generator's 4000 train / 1000 test.
MNIST1D = {"name": "mnist1d", "val_split": 0.1, "batch_size": 128, "eval_batch_size": 2048}


@dataclass
class CellSpec:
    """One cell of a study, run once per seed.

    Attributes:
        group: folder prefix and row label.
        role: ``teacher``, ``student`` (the student alone, the paired baseline), ``distilled``
            or ``scheme`` (one row per stage of the scheme's results).
        config: the run config without ``train.seed`` (the runner sets it).
        teacher_from: group of the teacher cell whose trained model is this cell's teacher
            (``teacher.model``/``kwargs`` copied from it, ``teacher.checkpoint`` pointed at it).
        first_seed_only: run for the first seed only (a sweep point).
        stages: for a scheme cell, the stages shown as rows (default: all).
        note: one line shown under the table.
    """

    group: str
    role: str
    config: dict[str, Any]
    teacher_from: str | None = None
    first_seed_only: bool = False
    stages: list[str] | None = None
    note: str = ""


@dataclass
class Study:
    name: str
    title: str
    claim: str
    cells: list[CellSpec]
    show_errors: bool = False
    notes: list[str] = field(default_factory=list)

    def cell(self, group: str) -> CellSpec:
        return next(c for c in self.cells if c.group == group)


def _cfg(data: dict, student: str, kwargs: dict | None = None, train: dict | None = None,
         method: Any = None, scheme: dict | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "data": copy.deepcopy(data),
        "student": {"model": student, "kwargs": dict(kwargs or {})},
        "method": method or {"name": "ce"},
        "train": {"progress": False, **(train or {})},
    }
    if scheme is not None:
        out["scheme"] = scheme
    for k, v in extra.items():
        out[k] = v
    return out


# -- 1. Hinton et al. 2015 on Fashion-MNIST ------------------------------------------------
def hinton_fmnist() -> Study:
    """Hinton, Vinyals & Dean 2015 (arXiv:1503.02531) sec. 3: on MNIST a 784-1200-1200-10
    teacher with dropout and +-2 pixel jitter made 67 test errors, a 784-800-800-10 student
    without regularisation 146, and the same student distilled at T=20 74."""
    adam = {"epochs": 20, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine"}
    sgd_cnn = {"epochs": 20, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
               "weight_decay": 5e-4, "schedule": "cosine"}
    jitter = {**FMNIST, "augment": {"shift": 2, "flip": False}}
    teacher_kw = {"hidden": [1200, 1200], "dropout": 0.5, "input_dropout": 0.2}
    student_kw = {"hidden": [800, 800]}
    # Hinton: "a relatively small weight on the hard targets"; alpha is the soft-target weight
    kd = {"name": "kd", "temperature": 20.0, "alpha": 0.9}
    cells = [
        CellSpec("teacher_mlp", "teacher", _cfg(jitter, "mlp", teacher_kw, adam),
                 note="MLP 784-1200-1200-10, dropout 0.2 (input) / 0.5 (hidden), +-2 px jitter"),
        CellSpec("teacher_cnn", "teacher", _cfg(jitter, "convnet4", None, sgd_cnn),
                 note="convnet4 (TAKD's 4-layer plain CNN), +-2 px jitter"),
        CellSpec("student", "student", _cfg(FMNIST, "mlp", student_kw, adam),
                 note="MLP 784-800-800-10, no dropout, no jitter, no weight decay"),
        CellSpec("kd_T20_mlp_teacher", "distilled", _cfg(FMNIST, "mlp", student_kw, adam, kd),
                 teacher_from="teacher_mlp", note="KD T=20, alpha=0.9 (soft) / 0.1 (hard)"),
        CellSpec("kd_T20_cnn_teacher", "distilled", _cfg(FMNIST, "mlp", student_kw, adam, kd),
                 teacher_from="teacher_cnn", note="KD T=20, alpha=0.9 from the CNN teacher"),
    ]
    # A teacher clearly better than the student (the convnet4 above is not: 933 vs 974 errors).
    # convnet8 reached 92.7% in 8 epochs in the TAKD study; 12 epochs with the teacher's jitter.
    cells.append(CellSpec("teacher_cnn8", "teacher", _cfg(jitter, "convnet8", None, {**sgd_cnn, "epochs": 12}),
                          note="convnet8 (TAKD's 8-layer plain CNN), +-2 px jitter, 12 epochs"))
    for t in (20, 4):
        cells.append(CellSpec(f"kd_T{t}_cnn8_teacher", "distilled",
                              _cfg(FMNIST, "mlp", student_kw, adam, {**kd, "temperature": float(t)}),
                              teacher_from="teacher_cnn8", note=f"KD T={t}, alpha=0.9 from the convnet8 teacher"))
    for t in (1, 2, 4, 8):
        cells.append(CellSpec(f"sweep_T{t}_mlp_teacher", "distilled",
                              _cfg(FMNIST, "mlp", student_kw, adam, {**kd, "temperature": float(t)}),
                              teacher_from="teacher_mlp", first_seed_only=True,
                              note=f"temperature sweep (first seed only), T={t}; T=20 is the row above"))
    return Study(
        "hinton_fmnist",
        "Hinton et al. 2015: MLP teacher with dropout + jitter -> unregularised MLP student",
        "On MNIST: teacher 67 test errors, student alone 146, student distilled at T=20 74 "
        "(Hinton, Vinyals & Dean 2015, arXiv:1503.02531, sec. 3). Here on Fashion-MNIST; a "
        "hand-written loop found the MLP teacher no better than the student (1231 vs 973 errors) "
        "while a small CNN teacher (651 errors) lowered the student from 978 to ~877 errors, so "
        "the CNN teacher is run beside it.",
        cells,
        show_errors=True,
        notes=["alpha 0.9 weights the soft-target term, 0.1 the hard-label cross-entropy "
               "(the paper: 'a relatively small weight on the hard targets'; its exact value is not given).",
               "The temperature sweep runs on the first seed only; pick T on the validation column, "
               "not on the test column."],
    )


# -- 2. Mirzadeh et al. 2019, teacher assistants -------------------------------------------
def _takd(data: dict, student: tuple[str, dict], teachers: list[tuple[str, str, dict]],
          assistant: tuple[str, str, dict], big: str, train: dict) -> list[CellSpec]:
    kd = {"name": "kd", "temperature": 4.0, "alpha": 0.9}
    cells = [CellSpec(g, "teacher", _cfg(data, m, kw, train), note=f"teacher {m} {kw or ''}".strip())
             for g, m, kw in teachers]
    s_model, s_kw = student
    cells.append(CellSpec("student", "student", _cfg(data, s_model, s_kw, train), note=f"{s_model} alone"))
    for g, _m, _kw in teachers:
        cells.append(CellSpec(f"kd_from_{g}", "distilled", _cfg(data, s_model, s_kw, train, kd),
                              teacher_from=g, note=f"plain KD from {g}"))
    ta_group, ta_model, ta_kw = assistant
    cells.append(CellSpec(ta_group, "distilled", _cfg(data, ta_model, ta_kw, train, kd), teacher_from=big,
                          note=f"the assistant: {ta_model} distilled from {big}"))
    cells.append(CellSpec(f"kd_via_{ta_group}", "distilled", _cfg(data, s_model, s_kw, train, kd),
                          teacher_from=ta_group, note=f"student distilled from the assistant ({big} -> TA -> student)"))
    return cells


TAKD_CLAIM = ("A 10-layer CNN teacher distilled into a 2-layer student gives a worse student than a "
              "smaller teacher can; going through a teacher assistant recovers it (CIFAR-10: "
              "Mirzadeh et al. 2019, arXiv:1902.03393, Table 1 and Fig. 2).")


def takd_fmnist() -> Study:
    sgd = {"epochs": 8, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
           "weight_decay": 5e-4, "schedule": "cosine"}
    teachers = [(f"teacher_convnet{n}", f"convnet{n}", {}) for n in (4, 6, 8, 10)]
    cells = _takd(FMNIST, ("convnet2", {}), teachers, ("ta_convnet4", "convnet4", {}), "teacher_convnet10", sgd)
    return Study("takd_fmnist", "TAKD on Fashion-MNIST: convnet2 student, convnet4/6/8/10 teachers",
                 TAKD_CLAIM, cells,
                 notes=["KD at T=4, alpha=0.9 throughout; SGD (lr 0.05, momentum 0.9, Nesterov, "
                        "weight decay 5e-4, cosine) as the TAKD example config."])


def takd_mnist1d() -> Study:
    adam = {"epochs": 60, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0, "schedule": "cosine"}
    teachers = [(f"teacher_cnn1d_c{c}", "cnn1d", {"channels": c}) for c in (16, 32, 64, 128)]
    cells = _takd(MNIST1D, ("cnn1d", {"channels": 8}), teachers, ("ta_cnn1d_c32", "cnn1d", {"channels": 32}),
                  "teacher_cnn1d_c128", adam)
    return Study("takd_mnist1d", "TAKD on MNIST-1D: teachers of growing width, one assistant",
                 TAKD_CLAIM, cells,
                 notes=["The paper's plain CNNs take images; on 1-D signals the teacher ladder is the "
                        "3-layer cnn1d at 16/32/64/128 channels and the student cnn1d at 8 channels "
                        "(size grows by width, not depth). KD at T=4, alpha=0.9."])


# -- 3. Every registered method, CRD-table layout ------------------------------------------
def _first_phase_epochs(method: str) -> int:
    """The default ``init_epochs`` of a method's first phase (AB, FT: 30), or 0."""
    import dataclasses

    from kdistill.methods import METHODS

    fields = {f.name: f for f in dataclasses.fields(METHODS.get(method).Config)}
    f = fields.get("init_epochs")
    return int(f.default) if f is not None and isinstance(f.default, int) else 0


def _method_variants(data: dict, sgd: dict, student: tuple[str, dict | None], methods: list[str]) -> list[CellSpec]:
    """Rows that are settings of a method rather than methods: logit standardization (Sun
    et al. CVPR 2024) on kd, dkd and mlkd, and DOT (Zhao et al. ICCV 2023, an optimizer) on kd."""
    out = []
    # LSKD's CIFAR-100 recipe for KD: base temperature 2 (the default with standardize), KD weight 9, CE 0.1
    ls = {"kd": [{"name": "kd", "standardize": True, "weight": 9.0}, {"name": "ce", "weight": 0.1}],
          "dkd": {"name": "dkd", "standardize": True}, "mlkd": {"name": "mlkd", "standardize": True}}
    for m, term in ls.items():
        if m in methods:
            out.append(CellSpec(f"{m}_ls", "distilled", _cfg(data, *student, sgd, term), teacher_from="teacher",
                                note=f"{m} with logit standardization (standardize: true, temperature 2"
                                     + (", KD weight 9 and CE 0.1 as LSKD's KD recipe)" if m == "kd" else ")")))
    if "kd" in methods:
        dot = {k: v for k, v in sgd.items() if k != "nesterov"} | {"optimizer": "dot", "dot_delta": 0.075}
        out.append(CellSpec("kd_dot", "distilled", _cfg(data, *student, dot, {"name": "kd"}),
                            teacher_from="teacher", note="kd trained with DOT (train.optimizer: dot, delta 0.075; "
                                                         "heavy-ball momentum, no Nesterov)"))
    return out


def _methods_cells(data: dict, sgd: dict, teacher: tuple[str, dict | None], student: tuple[str, dict | None],
                   methods: list[str] | None, notes: tuple[str, str]) -> list[CellSpec]:
    """Teacher, student alone, one row per method with its defaults, then the variants."""
    if methods is None:
        from kdistill.methods import METHODS
        from kdistill.methods._token_method import TokenDivergence

        # the token-level divergences (forward_kl, gkd, tvd, ...) are the causal-LM methods
        # and a method needing a two-head student (DeiT) or another tokenizer (uld, gold) has no row on this CNN pair
        methods = [m for m in METHODS.names() if m != "ce" and not issubclass(METHODS.get(m), TokenDivergence)
                   and not getattr(METHODS.get(m), "student_contract", "")
                   and not getattr(METHODS.get(m), "cross_tokenizer", False)]
    cells = [CellSpec("teacher", "teacher", _cfg(data, *teacher, {**sgd, "epochs": 6}), note=notes[0]),
             CellSpec("student", "student", _cfg(data, *student, sgd), note=notes[1])]
    for m in methods:
        term: dict[str, Any] = {"name": m}
        note = f"{m} with its default settings"
        pre = _first_phase_epochs(m)
        if pre:
            # RepDistiller's 30 first-phase epochs are 1/8 of its 240; 1/8 of 4 epochs rounds up to 1
            term["init_epochs"] = 1
            note += f", but its initialisation stage shortened from {pre} epochs to 1"
        cells.append(CellSpec(m, "distilled", _cfg(data, *student, sgd, term), teacher_from="teacher", note=note))
    return cells + _method_variants(data, sgd, student, methods)


_METHODS_NOTE = ("Every method uses its registered defaults (see `kdistill list methods`), except that "
                 "pre-stages (AB's and FT's `init_epochs`, 30 in RepDistiller next to 240 main epochs) "
                 "run 1 epoch, about the same share of the training. The token-level (causal-LM) "
                 "divergences are not in this table.")


def methods_fmnist(methods: list[str] | None = None) -> Study:
    """Tian, Krishnan & Isola 2020 (CRD, arXiv:1910.10699) Table 1 layout: teacher, student,
    then one row per method, on one teacher/student pair."""
    data = {**FMNIST, "batch_size": 512, "options": {"pad_to": 32}}
    sgd = {"epochs": 4, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True,
           "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 0.5}
    cells = _methods_cells(data, sgd, ("resnet20", None), ("resnet8", None), methods, ("resnet20", "resnet8 alone"))
    return Study(
        "methods_fmnist",
        "Every registered method, resnet20 -> resnet8 on Fashion-MNIST padded to 32x32",
        "CRD's CIFAR-100 table (Tian et al. 2020, arXiv:1910.10699, Table 1) ranks 12 methods on "
        "7 pairs over 240 epochs. Here one smaller pair for a few epochs, so all methods x 3 seeds fit "
        "about 8 GPU minutes: a smoke-level ranking, not the paper's numbers.",
        cells,
        notes=["resnet20 (0.27M params) teacher, resnet8 (0.08M) student, the CRD repo's CIFAR "
               "ResNets; SGD lr 0.2 (batch 512), Nesterov, weight decay 5e-4, cosine, half an epoch "
               "of warm-up; teacher 6 epochs, students 4.", _METHODS_NOTE],
    )


#: half-width CIFAR ResNets (stem 8, stages 8/16/32 channels) for the 2-core CPU table
_HALF = {"widths": [8, 8, 16, 32]}


def methods_fmnist_cpu(methods: list[str] | None = None) -> Study:
    """The method table at a size a loaded 2-core CPU finishes in about half an hour with
    three seeds (use ``--set data.subset=N``): half-width resnet20 -> resnet8 on the 28x28
    images, batch 128."""
    data = {**FMNIST, "name": FMNIST_SUBTEST, "batch_size": 128}
    sgd = {"epochs": 4, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
           "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 0.5}
    cells = _methods_cells(data, sgd, ("resnet", {"depth": 20, **_HALF}), ("resnet", {"depth": 8, **_HALF}), methods,
                           ("resnet20, half width (8/16/32 channels)", "resnet8, half width, alone"))
    return Study(
        "methods_fmnist_cpu",
        "Every registered method, half-width resnet20 -> resnet8 on Fashion-MNIST 28x28 (CPU size)",
        "The published CIFAR-100 order for resnet32x4 -> resnet8x4 is KD 73.33 < DKD 76.32 < MLKD 77.08 < "
        "MLKD + logit standardization 78.28 (DKD, MLKD and LSKD papers). Here a far smaller pair and "
        "budget: which of these orderings survive, and does distillation beat the student alone?",
        cells,
        notes=["Test accuracy is on a fixed 2,000-image subset of the 10,000 test images (the same for "
               "every cell and seed; `fashion-mnist-subtest`, defined in studies.py).",
               "resnet(depth 20, widths 8/16/32) teacher, resnet(depth 8, widths 8/16/32) student, no "
               "padding; SGD lr 0.05 (batch 128), Nesterov, weight decay 5e-4, cosine, half an epoch of "
               "warm-up; teacher 6 epochs, students 4 (before --epochs-scale).", _METHODS_NOTE],
    )


# -- 4. Multi-network schemes --------------------------------------------------------------
def schemes_mnist1d() -> Study:
    adam = {"epochs": 40, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0, "schedule": "cosine"}
    net = {"model": "cnn1d", "kwargs": {"channels": 32}}
    kd = {"name": "kd", "temperature": 4.0, "alpha": 0.9}

    def scheme(s: dict, teacher: bool = False, method: Any = None) -> dict:
        extra = {"teacher": dict(net)} if teacher else {}
        return _cfg(MNIST1D, net["model"], net["kwargs"], adam, method, s, **extra)

    cells = [
        CellSpec("student", "student", _cfg(MNIST1D, "cnn1d", {"channels": 32}, adam), note="cnn1d(32) alone"),
        CellSpec("ensemble", "scheme", scheme({"name": "ensemble", "members": 5}, True, kd),
                 stages=["member0", "ensemble", "student"],
                 note="Hinton 2015 sec. 4: 5 cnn1d(32) -> 1 cnn1d(32), mean of probabilities, KD T=4"),
        CellSpec("ban", "scheme", scheme({"name": "ban", "generations": 2}, method=kd),
                 note="Furlanello et al. 2018 (arXiv:1805.04770): born-again generations"),
        CellSpec("dml", "scheme", scheme({"name": "dml"}), note="Zhang et al. 2018 (arXiv:1706.00384): 2 peers"),
        CellSpec("one", "scheme", scheme({"name": "one", "branches": 3}),
                 note="Lan et al. 2018 (arXiv:1806.04606): 3 branches"),
        CellSpec("byot", "scheme", scheme({"name": "byot"}),
                 note="Zhang et al. 2019 (arXiv:1905.08094): early exits"),
        CellSpec("specialists", "scheme",
                 scheme({"name": "specialists", "clusters": 3, "specialist_train": {"epochs": 15, "lr": 1e-3}}, True),
                 note="Hinton 2015 sec. 5: generalist + 3 specialists"),
    ]
    return Study(
        "schemes_mnist1d",
        "Schemes on MNIST-1D: ensemble -> 1, BAN, DML, ONE, BYOT, specialists (cnn1d, 32 channels)",
        "Each scheme's paper reports a student better than the same network trained alone: the "
        "distilled ensemble nearly matches the ensemble (Hinton 2015), born-again students beat "
        "their teachers (BAN), mutual peers beat independent ones (DML), ONE's branches and BYOT's "
        "deepest exit beat the plain network, specialists raise accuracy on their classes.",
        cells,
        notes=["Every scheme uses the same cnn1d(32) network and training (AdamW lr 3e-3, cosine), so "
               "each row compares with the student-alone row seed by seed."],
    )


# -- 5. Transfer sets ----------------------------------------------------------------------
def transfer_mnist1d() -> Study:
    adam = {"epochs": 30, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0, "schedule": "cosine"}
    data = {**MNIST1D, "batch_size": 256}
    student = ("mlp", {"hidden": [100, 100]})
    kd = {"name": "kd", "temperature": 4.0, "alpha": 0.9}
    cells = [
        CellSpec("teacher", "teacher", _cfg(data, "cnn1d", {"channels": 64}, {**adam, "epochs": 60,
                                                                              "weight_decay": 0.05}),
                 note="cnn1d(64)"),
        CellSpec("student", "student", _cfg(data, *student, adam), note="MLP 100-100 alone"),
        CellSpec("kd_transfer_0", "distilled", _cfg(data, *student, adam, kd), teacher_from="teacher",
                 note="KD on the training set only (transfer size 0)"),
    ]
    for size in (5000, 25000, 100000):
        d = {**data, "transfer": {"source": "mnist1d", "size": size, "seed": 1}}
        cells.append(CellSpec(f"kd_transfer_{size // 1000}k", "distilled", _cfg(d, *student, adam, kd),
                              teacher_from="teacher",
                              note=f"+ {size} unlabelled MNIST-1D samples (generator seed 1) labelled by the teacher"))
    for gen in ("munge", "noise"):
        cells.append(CellSpec(f"{gen}_25k", "scheme",
                              _cfg(data, *student, adam, kd, {"name": "transfer", "generator": gen, "size": 25000}),
                              teacher_from="teacher", stages=["student"],
                              note=f"+ 25000 {gen.upper() if gen == 'munge' else 'Gaussian-noise'} pseudo-samples "
                                   "labelled by the teacher"))
    return Study(
        "transfer_mnist1d",
        "Transfer sets on MNIST-1D: cnn1d(64) teacher -> MLP 100-100 student",
        "More teacher-labelled inputs bring the student closer to the teacher; where no real unlabelled "
        "data exist, MUNGE pseudo-data (Bucilua, Caruana & Niculescu-Mizil 2006) do much of the same, "
        "Gaussian noise does not.",
        cells,
        notes=["Epochs are fixed, so larger transfer sets also mean more optimizer steps.",
               "The runner generates the 100k MNIST-1D transfer set once (generator seed 1, another seed "
               "than the dataset's 42) and every cell reads a prefix of it: the 5k set is nested in the 25k "
               "set, which is nested in the 100k set.",
               "Transfer inputs carry no labels (label -1): only the KD term sees them."],
    )


STUDIES = {
    "hinton_fmnist": hinton_fmnist,
    "takd_fmnist": takd_fmnist,
    "takd_mnist1d": takd_mnist1d,
    "methods_fmnist": methods_fmnist,
    "methods_fmnist_cpu": methods_fmnist_cpu,
    "schemes_mnist1d": schemes_mnist1d,
    "transfer_mnist1d": transfer_mnist1d,
}
