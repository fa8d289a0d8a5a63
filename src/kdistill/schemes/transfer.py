"""Transfer sets: pseudo-data labelled by the teacher (Bucilua, Caruana & Niculescu-Mizil 2006).

Bucilua, Caruana & Niculescu-Mizil (2006), "Model Compression", KDD 2006. A student mimics
a teacher on far more inputs than the labelled set when those inputs are generated close
to the data's distribution. Generators (``scheme.generator``):

* ``munge`` (the paper's MUNGE): for each training sample ``e`` find its nearest neighbour
  ``e'`` (Euclidean); each attribute is taken from ``e'`` with probability ``p`` (0.5) and
  then drawn from a normal around that value with ``sd = |e_a - e'_a| / s`` (``s`` = 1.0,
  the paper's local-variance parameter; ``s = inf`` gives no perturbation). Passes over the
  training set are repeated until ``size`` samples exist. The paper swaps values in both
  ``e`` and ``e'`` while walking the set; here every sample takes from its neighbour in one
  vectorised pass, so each pseudo-sample's attributes (before perturbation) come from one
  real sample or its nearest neighbour.
* ``noise``: Gaussian noise with the training set's per-attribute mean and standard
  deviation (a weak baseline: it ignores the data's structure, as the paper's RANDOM does).
* ``dataset``: the run's ``data.transfer`` section (e.g. MNIST-1D from another generator seed).

The pseudo-data are written to ``transfer.npz`` and reach the student through
``data.transfer`` (``source: npz``): unlabelled samples (label -1) that the teacher's soft
targets label and the hard-label CE skips. Folders: ``teacher/`` (trained unless it has a
checkpoint), ``student/`` (the student on train + pseudo-data, the deployable result).
"""

from __future__ import annotations

import io
import math
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from ..atomic import atomic_write_bytes
from ..config import TeacherConfig
from ..errors import ConfigError
from ..runs import is_main_process, sync_processes
from ._common import SchemeContext, deployable, model_path, summary
from ._registry import Scheme, SchemeConfig, register_scheme


def nearest_neighbours(x: Tensor, chunk: int = 2048) -> Tensor:
    """Index of each row's nearest other row (Euclidean), in chunks to bound memory."""
    flat = x.reshape(x.shape[0], -1).float()
    out = torch.empty(flat.shape[0], dtype=torch.long)
    for i in range(0, flat.shape[0], chunk):
        d = torch.cdist(flat[i : i + chunk], flat)
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        out[i : i + chunk] = d.argmin(1)
    return out


def munge(
    x: Tensor, size: int, p: float = 0.5, s: float = 1.0, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """MUNGE pseudo-samples (see module docstring).

    Returns:
        ``(pseudo, source, neighbour)``: the ``(size, *x.shape[1:])`` samples and, for each,
        the index of the real sample it came from and of that sample's nearest neighbour.
    """
    if x.shape[0] < 2:
        raise ConfigError(
            "MUNGE needs at least two training samples (each takes from its nearest neighbour)."
        )
    if not 0 <= p <= 1 or s <= 0:
        raise ConfigError(f"MUNGE needs 0 <= p <= 1 and s > 0 (got p={p}, s={s}).")
    g = torch.Generator().manual_seed(seed)
    nn_idx = nearest_neighbours(x)
    src = torch.arange(size) % x.shape[0]
    e, e2 = x[src].float(), x[nn_idx[src]].float()
    swap = torch.rand(e.shape, generator=g) < p
    base = torch.where(swap, e2, e)
    if math.isinf(s):
        return base, src, nn_idx[src]
    sd = (e - e2).abs() / s
    noise = torch.randn(e.shape, generator=g) * sd
    return base + torch.where(swap, noise, torch.zeros_like(noise)), src, nn_idx[src]


def gaussian_noise(x: Tensor, size: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    mean, std = x.float().mean(0), x.float().std(0)
    return mean + std * torch.randn((size, *x.shape[1:]), generator=g)


@register_scheme("transfer")
class TransferSet(Scheme):
    class Config(SchemeConfig):
        """Settings.

        Attributes:
            generator: ``munge``, ``noise`` or ``dataset`` (the run's ``data.transfer``).
            size: number of pseudo-samples (default: 4 times the training set, one MUNGE
                pass per copy).
            p: MUNGE's swap probability (0.5, the paper's).
            s: MUNGE's local-variance parameter (1.0; ``.inf`` for no perturbation).
            seed: the generator's seed.
        """

        generator: Literal["munge", "noise", "dataset"] = "munge"
        size: Annotated[int, Field(ge=1, le=10**8)] | None = None
        p: Annotated[float, Field(ge=0, le=1)] = 0.5
        s: Annotated[float, Field(gt=0)] = 1.0
        seed: int = 0

    def run(self, ctx: SchemeContext, st: Config) -> dict:
        cfg = ctx.cfg
        if cfg.teacher is None or (cfg.teacher.model is None and not cfg.teacher.ensemble):
            raise ConfigError(
                "The transfer scheme labels pseudo-data with a teacher; configure teacher.model."
            )
        stages = {}
        teacher = cfg.teacher
        if teacher.model is not None and teacher.checkpoint is None:
            from ..config import ModelConfig

            res = ctx.run_step(
                "teacher", ModelConfig(model=teacher.model, kwargs=teacher.kwargs), train=ctx.scratch_train()
            )
            teacher = teacher.model_copy(update={"checkpoint": model_path(res)})
            stages["teacher"] = summary(res)
        teacher = TeacherConfig(**teacher.model_dump())

        train = ctx.data.train
        x = train.take(torch.arange(len(train)))["x"]  # MUNGE and noise read every input
        size = st.size or 4 * x.shape[0]
        if st.generator == "dataset":
            if cfg.data.transfer is None:
                raise ConfigError(
                    "scheme.generator 'dataset' uses the data.transfer section; set it (source: mnist1d)."
                )
            transfer = cfg.data.transfer.model_dump(mode="json")
        else:
            path = ctx.run_dir / "transfer.npz"
            if not (ctx.resume and path.is_file()) and is_main_process():
                pseudo = (
                    munge(x, size, st.p, st.s, st.seed)[0]
                    if st.generator == "munge"
                    else gaussian_noise(x, size, st.seed)
                )
                buf = io.BytesIO()
                np.savez(buf, x=pseudo.numpy().astype(np.float32))
                atomic_write_bytes(path, buf.getvalue())
            # the other processes read it next (every process once wrote it in place, and
            # one could read the file while another was rewriting it)
            sync_processes()
            transfer = {"source": "npz", "path": str(path), "size": size}
        student = ctx.run_step("student", cfg.student, teacher, transfer=transfer)
        stages["student"] = summary(student)
        return {
            "stages": stages,
            "generator": st.generator,
            "transfer_size": student["dataset"]["transfer"],
            **deployable(student),
        }
