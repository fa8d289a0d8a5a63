"""The training loop, on HF Accelerate.

One loop trains every network kdistill trains (teacher, scratch student, distilled
student): a :class:`~kdistill.methods.Distiller` whose ``forward(batch)`` returns the
weighted loss and its parts. The trainer sums nothing itself: it steps, schedules the
learning rate, evaluates, logs ``metrics.jsonl`` and checkpoints.

Exact resume: batches come from the training set's loader (``train_data.loader``; the
device-resident :class:`~kdistill.data.DeviceLoader` for arrays), whose order and
augmentation are a function of ``(seed, epoch)``, the learning rate is a function of the
step, and checkpoints hold the optimizer and RNG states; so a run stopped at any optimizer
step and resumed ends with the same weights as one that never stopped (bit-identical on
CPU with ``train.deterministic``).
"""

from __future__ import annotations

import json
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import distributed
from ..atomic import atomic_write_text
from ..cache import stored_views
from ..config import TrainConfig
from ..data import Augment, Dataset, Loader
from ..devices import peak_memory_bytes, resolve_device
from ..errors import CheckpointError, ConfigError, Interrupted, NonFiniteError
from ..methods import Distiller
from ..metrics import classification_metrics, predict_logits
from . import sharding
from .checkpoint import (
    checkpoint_path,
    intact_checkpoints,
    list_checkpoints,
    load_into,
    read_resume_point,
    remove_litter,
    save_checkpoint,
)
from .optim import lr_factor, make_optimizer
from .phases import run_first_phases
from .progress import EpochProgress, heading
from .tracking import Trackers

_ACCELERATORS: dict[tuple, Any] = {}


def get_accelerator(device: torch.device, precision: str, fsdp: bool = False):
    """One Accelerate ``Accelerator`` per (device type, precision, FSDP) in this process;
    with ``fsdp``, Accelerate's FSDP2 plugin (see :mod:`kdistill.engine.sharding`)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    key = (device.type, mp, fsdp)
    if key not in _ACCELERATORS:
        if _ACCELERATORS:  # Accelerate keeps global state; switching settings needs a reset
            sharding.reset_accelerator_state(next(iter(_ACCELERATORS.values())))
            sharding.disable_on_cpu()
            _ACCELERATORS.clear()
        plugin = sharding.make_plugin() if fsdp else None
        # DDP does not broadcast buffers every forward: BatchNorm in training mode reads
        # batch statistics, the teacher's buffers never change, and state that every process
        # needs (CRD's memory banks) is kept equal by the method itself (see distributed.py);
        # evaluations and checkpoints take process 0's buffers, as under FSDP
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
        acc = Accelerator(cpu=device.type == "cpu", mixed_precision=mp, fsdp_plugin=plugin, kwargs_handlers=[ddp])
        if plugin is not None:
            sharding.enable_on_cpu(acc, plugin, mp)
        _ACCELERATORS[key] = acc
    return _ACCELERATORS[key]


class Trainer:
    """Train a distiller and evaluate its student.

    Args:
        distiller: what to train (student + terms; the teacher stays frozen).
        train_data: training samples (labels -1 mark teacher-labelled transfer samples).
        eval_sets: ``{"val": ..., "test": ...}``; the best checkpoint is chosen on ``val``
            when present, else on ``test`` (then "best" is optimistic, and says so).
        cfg: the train section.
        run_dir: the run folder (checkpoints/, metrics.jsonl).
        batch_size: training batch size.
        augment: on-device augmentation of training inputs.
        teacher_logits: teacher logits for each eval set (agreement and KL metrics).
        log: a function that prints one line.
        hparams: the run's config, logged to experiment trackers as hyperparameters.
        role: what is trained (``teacher``, ``student``, a scheme's step): names the
            heading line and the progress bar.
        metrics_fn: ``metrics_fn(student, dataset) -> dict`` replaces the classification
            metrics (a causal LM's perplexity and token accuracy); the dict must hold ``acc``,
            which selects the best epoch.
    """

    def __init__(
        self,
        distiller: Distiller,
        train_data: Dataset,
        eval_sets: dict[str, Dataset],
        cfg: TrainConfig,
        run_dir: str | Path,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        augment: Augment | None = None,
        teacher_logits: dict[str, Tensor] | None = None,
        log: Callable[[str], None] = print,
        hparams: dict[str, Any] | None = None,
        role: str | None = None,
        metrics_fn: Callable[[torch.nn.Module, Dataset], dict[str, float]] | None = None,
    ):
        self.distiller = distiller
        self.role = role
        self.metrics_fn = metrics_fn
        self.hparams = hparams
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.eval_sets = eval_sets
        self.eval_batch_size = eval_batch_size
        self.teacher_logits = teacher_logits or {}
        self.log = log
        self.device = resolve_device(cfg.device)
        self.accelerator = get_accelerator(self.device, cfg.precision, cfg.fsdp)
        self.device = self.accelerator.device
        self.fsdp = sharding.is_fsdp(self.accelerator)
        if not self.accelerator.is_main_process:  # one set of progress lines, not one per process
            self.log = lambda line: None
        if cfg.fsdp and not self.fsdp:
            self.log("train.fsdp: one process has nothing to shard; training unsharded.")
        self.units: list[str] = []
        views = stored_views(distiller.teacher, augment)  # a teacher cache's fixed augmented views
        self._loader_args = dict(
            shuffle=True, seed=cfg.seed, device=self.device, augment=augment if views is None else None, views=views)
        self.train_data, self.batch_size = train_data, batch_size
        self.loader = train_data.loader(  # the dataset chooses its loader (device-resident for arrays)
            batch_size, rank=self.accelerator.process_index, world=self.accelerator.num_processes,
            **self._loader_args,
        )
        cl = cfg.channels_last
        # auto: NHWC for image batches on every device (oneDNN's CPU convolutions gain too)
        self.channels_last = cl if isinstance(cl, bool) else len(train_data.input_shape) == 3
        self.select_on = "val" if "val" in eval_sets else "test"
        self._stop_signal: int | None = None
        self.skipped_steps = 0
        self._resumed_running: tuple[dict[str, Tensor], int] | None = None

    # -- signals -------------------------------------------------------------------------
    def _on_signal(self, signum, _frame):
        self._stop_signal = signum

    def _install_signals(self):
        saved = {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                saved[s] = signal.signal(s, self._on_signal)
        except ValueError:  # not the main thread
            pass
        return saved

    def phase_loader(self) -> Loader:
        """Batches for first phases: with several processes, every process reads the whole
        training set at the global batch size (the one-process batches), so all of them
        make the same updates without any gradient exchange."""
        world = self.accelerator.num_processes
        if world == 1:
            return self.loader
        return self.train_data.loader(self.batch_size * world, **self._loader_args)

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self) -> dict[str, dict[str, float]]:
        model = self.accelerator.unwrap_model(self.model)
        if self.accelerator.num_processes > 1:
            # every process evaluates on rank 0's BatchNorm statistics: under DDP each
            # process's running statistics last saw its own batch, and metrics that differ
            # between processes would split agreed decisions (early stopping, best epoch).
            # The final evaluation so also leaves every process with the model the main
            # process saves (a scheme's next stage and its evaluations run on all of them).
            distributed.sync_buffers(model)
        student = model.student
        out = {}
        for name, ds in self.eval_sets.items():
            if self.metrics_fn is not None:
                out[name] = self.metrics_fn(student, ds)
                continue
            # fp32, not autocast: reported metrics must not depend on the training precision
            logits = predict_logits(student, ds, self.eval_batch_size, self.device)
            out[name] = classification_metrics(logits, ds.labels(), self.teacher_logits.get(name))
        if self.fsdp:
            sharding.reshard(model)
        return out

    # -- checkpoints ---------------------------------------------------------------------
    def _save(self, kind: str, state: dict[str, Any], keep: int = 2,
              running: tuple[dict[str, Tensor], int] | None = None):
        """Write a checkpoint. ``running``: the epoch's loss sums and sample count so far
        (mid-epoch saves), so a resumed epoch logs the mean over all of its batches."""
        run_state = self._running_state(running) if kind == "last" else None
        model: Any = self.accelerator.unwrap_model(self.model)
        if self.fsdp:  # gathering the full weights is a collective: every process takes part
            distributed.sync_buffers(model)
            model = sharding.full_model_state(model)
            optim = (sharding.full_optimizer_state(self.accelerator.unwrap_model(self.model), self.optimizer)
                     if kind == "last" else None)  # "best" keeps weights only
        if not self.accelerator.is_main_process:
            return checkpoint_path(self.ckpt_dir, kind, state["step"])  # what the main process writes
        train_state = {
            "optimizer": optim if self.fsdp else self.optimizer.state_dict(),
            "optimizer_format": sharding.OPTIMIZER_FORMAT[self.fsdp],
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }
        if run_state is not None:
            train_state["running"] = run_state
        return save_checkpoint(
            self.ckpt_dir, kind, state["step"], model, state, train_state if kind == "last" else None, keep=keep,
        )

    def _running_state(self, running: tuple[dict[str, Tensor], int] | None) -> dict[str, Any]:
        """The epoch's running loss sums as tensors: one row per process (each process sums
        its own shard; gathering is a collective, so every process calls this)."""
        sums, n_seen = running or ({}, 0)
        keys = sorted(sums)
        row = torch.stack([sums[k].detach().float().reshape(()) for k in keys]
                          + [torch.tensor(float(n_seen), device=self.device)])
        if self.accelerator.num_processes > 1:
            row = self.accelerator.gather(row[None])
        return {"keys": keys, "rows": row.reshape(-1, len(keys) + 1).cpu()}

    def _restore_running(self, ts: dict[str, Any], batch: int) -> tuple[dict[str, Tensor], int]:
        """This process's running sums from a checkpoint (empty at an epoch boundary, or for a
        checkpoint written before they were saved: that epoch then averages the batches after
        the resume only)."""
        run = ts.get("running")
        if not batch or not isinstance(run, dict) or not isinstance(run.get("rows"), Tensor) \
                or not isinstance(run.get("keys"), list):
            return {}, 0
        rows = run["rows"]
        if rows.dim() != 2 or rows.shape != (self.accelerator.num_processes, len(run["keys"]) + 1):
            return {}, 0
        mine = rows[self.accelerator.process_index].to(self.device)
        return {k: mine[i] for i, k in enumerate(run["keys"])}, int(mine[-1])

    def _resume_point(self):
        """The newest ``last`` checkpoint whose files load and make sense, as ``(path, meta,
        weights, train_state)``; damaged ones are skipped with a warning naming them. ``None``
        when there is no checkpoint; an error when there are some and none is usable."""
        found = intact_checkpoints(self.ckpt_dir, "last")
        if not found:
            if list_checkpoints(self.ckpt_dir, "last"):
                raise CheckpointError(
                    f"No checkpoint in {self.ckpt_dir} is intact (see the warnings above); remove that "
                    "folder to start the run over, or rerun without --resume into another folder.")
            return None
        problems = []
        for path, meta in found:
            try:
                weights, ts = read_resume_point(path, meta)
            except CheckpointError as e:
                problems.append(str(e).rstrip("."))
                warnings.warn(f"Skipping damaged checkpoint: {e}", stacklevel=2)
                continue
            return path, meta, weights, ts
        raise CheckpointError(
            f"No checkpoint in {self.ckpt_dir} can be resumed ({'; '.join(problems)}). Remove that folder "
            "to start the run over, or rerun without --resume into another folder.")

    def _restore(self, found) -> dict[str, Any] | None:
        if found is None:
            return None
        path, meta, weights, ts = found
        written_by = ts.get("optimizer_format", "torch")
        if written_by != sharding.OPTIMIZER_FORMAT[self.fsdp]:
            was = written_by == sharding.OPTIMIZER_FORMAT[True]
            raise ConfigError(
                f"The checkpoint {path} was written by a {'sharded (train.fsdp)' if was else 'unsharded'} run; "
                f"resume it {'with train.fsdp=true and 2+ processes' if was else 'without train.fsdp'}."
            )
        try:
            self._apply(weights, ts)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path} does not fit this run ({type(e).__name__}: {e}); was the config "
                                  "changed since it was written? Resume with the same config.") from None
        self.log(f"Resuming from {path} (epoch {meta['epoch']}, step {meta['step']}).")
        self._resumed_running = self._restore_running(ts, meta.get("batch", 0))
        return meta

    def _apply(self, weights: dict[str, Tensor], ts: dict[str, Any]) -> None:
        if self.fsdp:
            sharding.load_full_state(self.accelerator.unwrap_model(self.model), self.optimizer, weights, ts["optimizer"])
        else:
            load_into(self.accelerator.unwrap_model(self.model), weights, "distiller")
            self.optimizer.load_state_dict(ts["optimizer"])
        torch.set_rng_state(ts["rng_cpu"])
        if ts.get("rng_cuda") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ts["rng_cuda"])

    def _append_metrics(self, row: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, epoch: int) -> None:
        """Drop rows of epochs at or after ``epoch`` (they will be redone after a resume)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists() or not self.accelerator.is_main_process:
            return
        rows = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line cut by a kill
            # first-stage rows (no epoch) come before epoch 0 and are not redone on a resume
            if "epoch" not in row or row["epoch"] < epoch:
                rows.append(line)
        atomic_write_text(path, "".join(r + "\n" for r in rows))

    # -- the loop ------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train ``cfg.epochs`` epochs (from the last checkpoint with ``resume``) and return
        the results: :meth:`prepare`, the epoch loop over :meth:`train_step`, :meth:`release`."""
        found = self.prepare(resume)
        try:
            return self._loop(found)
        finally:
            self.release()

    def prepare(self, resume: bool = False):
        """Everything before the first step: seeds, the checkpoint to resume from (returned,
        or None), the fast path, first phases, the optimizer and the Accelerate wrappers.
        :meth:`train_step` may be called after it (``kdistill bench`` times it so);
        :meth:`release` undoes what it holds."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.accelerator.is_main_process:  # temporary files of writes a kill interrupted
            for folder in (self.run_dir, self.ckpt_dir):
                for name in remove_litter(folder):
                    self.log(f"Removed {folder / name}, left by an interrupted write.")
        found = self._resume_point() if resume else None
        if found is None and self.accelerator.is_main_process:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        self.distiller.to(self.device)
        self._fast_path(self.distiller)
        if found is None:
            # before the DDP/FSDP wrapper: first phases run the same full batches on every
            # process, so the replicas (or the shards cut from them) start out identical
            for row in run_first_phases(self):
                self._append_metrics(row)
        work = self.distiller
        if self.fsdp:  # shard a copy; the caller's distiller gets the full weights at the end
            work = sharding.working_copy(self.distiller)
            for m in self.distiller.children():
                m.to("cpu")
            self.units = sharding.set_units(self.accelerator, work, work.student, cfg.fsdp_wrap)
        self.optimizer = make_optimizer(work.trainable_parameters(), cfg, self.device, sharded=self.fsdp)
        if hasattr(self.optimizer, "attach"):  # an optimizer that reads the distiller (DOT)
            self.optimizer.attach(work)
        self.model, self.optimizer = self.accelerator.prepare(work, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)  # the first step sees its own gradients only
        del work
        if self.fsdp:
            sharded = self.accelerator.unwrap_model(self.model)
            sharding.check_sharded(sharded)
            sharding.keep_student_gathered(sharded.student)
            self._local_fraction = sharding.local_fraction(sharded)
        self._work = self.accelerator.unwrap_model(self.model)
        self._work.to(self.device)  # the teacher too (it is outside the module tree)
        self._deferred = self._defer_nonfinite_checks()
        self._bad: Tensor | None = None
        return found

    def release(self) -> None:
        """Let go of what :meth:`prepare` holds: the accelerator keeps every prepared model
        and optimizer, so without this each run in one process (a scheme's steps, a study,
        the bench's paths) keeps its own alive."""
        self.accelerator.free_memory()
        self._work = None
        if self.fsdp:  # free the shards before anything else (see sharding.collect)
            self.model = self.optimizer = None
            sharding.collect()
            for m in self.distiller.children():
                m.to(self.device)

    def _loop(self, found) -> dict[str, Any]:
        """The epochs (or ``train.max_steps`` optimizer steps) from the resume point on."""
        cfg = self.cfg
        distiller = self.accelerator.unwrap_model(self.model)
        distiller.to(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        st = self._plan(found)
        trackers = Trackers(cfg.log_with if self.accelerator.is_main_process else [], self.run_dir, self.hparams)
        saved_handlers = self._install_signals()
        t_start = time.perf_counter()
        student = type(distiller.student).__name__
        # a term weighted 0 (a token method's default CE) does not train: not in the heading
        terms = " + ".join(m.name for w, m in zip(distiller.weights, distiller.terms) if w) or "no weighted term"
        self.log(heading(self.role or "training", f"{student} with {terms}", st.epochs, st.steps_per_epoch,
                         self.device))
        bar = EpochProgress(cfg.progress and self.accelerator.is_main_process, self.role or "training",
                            st.steps_per_epoch, st.epochs)
        try:
            while st.epoch < st.epochs and not st.budget_spent(cfg.max_steps):
                distiller.set_epoch(st.epoch, st.epochs)
                self.model.train()
                sums, n_seen, epoch_time, waited = self._run_epoch(st, bar)
                self._end_epoch(st, sums, n_seen, epoch_time, waited, trackers)
                if self._stopping() and st.epoch < st.epochs and not st.budget_spent(cfg.max_steps):
                    raise Interrupted(self._interrupt_message(st.last_good))
        finally:
            bar.stop()
            trackers.finish()
            for s, h in saved_handlers.items():
                signal.signal(s, h)
        # the last epoch was just evaluated (it always is): its metrics are the final ones;
        # a resume into a finished run evaluates once
        final = st.last_eval if st.last_eval is not None else (self.evaluate() if st.epochs else {})
        return self._results(st, final, time.perf_counter() - t_start)

    def _plan(self, found) -> _LoopState:
        """Epochs, steps and the learning-rate horizon of this training, and where it starts
        (a checkpoint's epoch, batch and step on a resume)."""
        cfg = self.cfg
        batches = len(self.loader)
        steps_per_epoch = -(-batches // cfg.grad_accum)
        epochs = cfg.epochs
        if cfg.max_steps:  # a step budget replaces the epoch count (as in transformers' Trainer)
            epochs = -(-cfg.max_steps // max(1, steps_per_epoch))
        st = _LoopState(batches=batches, steps_per_epoch=steps_per_epoch, epochs=epochs,
                        total=max(1, cfg.max_steps or epochs * steps_per_epoch),
                        warmup=int(round(cfg.warmup_epochs * steps_per_epoch)))
        meta = self._restore(found)
        if meta is not None:
            st.epoch, st.start_batch, st.step = meta["epoch"], meta["batch"], meta["step"]
            st.best = meta.get("best", st.best)
            st.history = meta.get("history", [])
            st.throughput = meta.get("throughput", st.throughput)
            self.skipped_steps = meta.get("skipped_steps", 0)
            self._truncate_metrics(st.epoch)
        return st

    def _run_epoch(self, st: _LoopState, bar: EpochProgress) -> tuple[dict[str, Tensor], int, float, float]:
        """The batches of epoch ``st.epoch`` from ``st.start_batch`` on; returns the loss sums,
        the samples seen, the epoch's training seconds (checkpoint writes excluded) and the
        seconds spent waiting for batches."""
        cfg = self.cfg
        sums: dict[str, Tensor] = {}
        n_seen = 0
        if st.start_batch and self._resumed_running is not None:  # the interrupted epoch's sums
            sums, n_seen = self._resumed_running
        self._resumed_running = None
        waited = [0.0]  # seconds the loop spent waiting for the loader's next batch
        saving = 0.0  # seconds spent writing mid-epoch checkpoints
        tokens = torch.zeros((), dtype=torch.int64, device=self.device)
        samples = 0
        t0 = t_mark = time.perf_counter()  # the epoch's start; the start of the steps not yet counted
        bar.start(st.epoch, -(-st.start_batch // cfg.grad_accum))
        for b, batch in enumerate(_timed(self.loader.iterate(st.epoch, st.start_batch), waited), start=st.start_batch):
            last_of_epoch = b + 1 == st.batches
            apply = (b + 1) % cfg.grad_accum == 0 or last_of_epoch
            out = self.train_step(batch, st.step, st.total, st.warmup, apply, st.epoch, st.last_good)
            y = batch["y"]
            samples += int(y.shape[0])
            if y.dim() > 1:  # a target per position (tokens): count the positions that have one
                tokens += (y >= 0).sum()
            if out is None:  # a non-finite loss or gradient skipped the batch
                continue
            if not apply:
                continue
            st.step += 1
            if self._deferred and st.step % cfg.log_every == 0:
                self._check_flag(st.epoch, st.step, st.last_good)
            bs = y.shape[0]
            n_seen += bs
            bar.step(bs, out["loss"])
            for k, v in out.items():
                if k.startswith("loss"):
                    sums[k] = sums.get(k, 0.0) + v.detach().float() * bs
            if st.budget_spent(cfg.max_steps):
                break
            stop = not last_of_epoch and self._stopping(st.step)
            if stop or (not last_of_epoch and cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0):
                now = time.perf_counter()
                st.add_throughput(now - t_mark, samples, tokens)  # saved with the checkpoint
                samples = 0
                tokens.zero_()
                self._check_flag(st.epoch, st.step, st.last_good)
                st.last_good = self._save("last", self._state(st, st.epoch, b + 1), running=(sums, n_seen))
                t_mark = time.perf_counter()
                saving += t_mark - now
                if stop:
                    raise Interrupted(self._interrupt_message(st.last_good))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the epoch's queued steps belong to its time
        end = time.perf_counter()
        st.add_throughput(end - t_mark, samples, tokens)
        epoch_time = end - t0 - saving
        bar.stop()
        self._check_flag(st.epoch, st.step, st.last_good)
        if self.accelerator.num_processes > 1:  # log the epoch's means over every process's shard
            keys = sorted(sums)
            tot = self.accelerator.reduce(torch.stack(
                [sums[k] for k in keys] + [torch.tensor(float(n_seen), device=self.device)]), "sum")
            sums, n_seen = dict(zip(keys, tot[:-1], strict=True)), int(tot[-1])
        return sums, n_seen, epoch_time, waited[0]

    def _end_epoch(self, st: _LoopState, sums: dict[str, Tensor], n_seen: int, epoch_time: float, waited: float,
                   trackers: Trackers) -> None:
        """Log the epoch's row, evaluate (every ``eval_every`` epochs and after the last one),
        keep the best checkpoint and write the ``last`` one."""
        cfg = self.cfg
        st.start_batch = 0
        row: dict[str, Any] = {"epoch": st.epoch, "step": st.step, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": float(v) / max(1, n_seen) for k, v in sums.items()})
        row["epoch_time_s"] = round(epoch_time, 3)
        row["data_wait_fraction"] = round(waited / max(epoch_time, 1e-9), 4)
        last = st.epoch + 1 == st.epochs or st.budget_spent(cfg.max_steps)
        st.last_eval = None
        if (st.epoch + 1) % cfg.eval_every == 0 or last:
            ev = self.evaluate()
            st.last_eval = ev if last else None
            for split, m in ev.items():
                row.update({f"{split}_{k}": v for k, v in m.items()})
            score = ev[self.select_on]["acc"]
            if self._any(score > st.best["score"]):  # the same decision on every process
                st.best = {"score": score, "epoch": st.epoch, "metrics": ev}
                self._save("best", self._state(st, st.epoch + 1, 0), keep=1)
        st.history.append(row)
        self._append_metrics(row)
        trackers.log(row, row["step"])
        st.epoch += 1
        st.last_good = self._save("last", self._state(st, st.epoch, 0))
        self.log(_epoch_line(row, st.epochs))

    def _results(self, st: _LoopState, final: dict, wall_s: float) -> dict[str, Any]:
        dist_info: dict[str, Any] = {
            "processes": self.accelerator.num_processes,
            "strategy": "fsdp" if self.fsdp else ("ddp" if self.accelerator.num_processes > 1 else "none"),
        }
        if self.fsdp:
            sharded = self.accelerator.unwrap_model(self.model)
            dist_info |= {"units": self.units, "local_param_fraction": round(self._local_fraction, 4)}
            self.distiller.load_state_dict(sharding.full_model_state(sharded, everywhere=True))
        # throughput from the training steps' time alone (the loader's waits included;
        # evaluations and checkpoint writes not), over every process (each counts its shard)
        tp, world = st.throughput, self.accelerator.num_processes
        rates = {"train_step_time_s": round(tp["seconds"], 3),
                 "train_samples_per_s": round(world * tp["samples"] / max(tp["seconds"], 1e-9), 1)}
        if tp["tokens"]:
            rates["train_tokens_per_s"] = round(world * tp["tokens"] / max(tp["seconds"], 1e-9), 1)
        return {
            "final": final,
            "best": {"epoch": st.best["epoch"], "selected_on": self.select_on, **(st.best["metrics"] or {})},
            "epochs": st.epochs,
            "steps": st.step,
            **({"max_steps": self.cfg.max_steps} if self.cfg.max_steps else {}),
            "skipped_steps": self.skipped_steps,
            "train_time_s": round(wall_s, 2),
            **rates,
            "device": str(self.device),
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "distributed": dist_info,
        }

    def train_step(self, batch: dict, step: int = 0, total: int = 1, warmup: int = 0, apply: bool = True,
                   epoch: int = 0, last_good=None) -> dict[str, Tensor] | None:
        """One training step on ``batch``, after :meth:`prepare`: the learning rate of
        optimizer step ``step`` of ``total`` (``warmup`` warm-up steps), the forward under
        autocast, the non-finite checks, the backward, and, when ``apply`` (the last
        micro-batch of a gradient accumulation), clipping and the optimizer step. Returns
        the forward's outputs, or None when ``train.on_nonfinite=skip`` skipped the batch;
        ``epoch`` and ``last_good`` (the last checkpoint) only go into error messages."""
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, total, warmup, cfg.schedule, cfg.milestones, cfg.gamma)
        if self.channels_last and batch["x"].dim() == 4:
            batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
        if cfg.compile and cfg.compile_mode in ("reduce-overhead", "max-autotune"):
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: a new step
        with self.accelerator.autocast():
            out = self.model(batch)
        loss = out["loss"]
        if self._deferred:
            self._flag(loss)
        elif self._any(not torch.isfinite(loss)):
            bad = [k for k, v in out.items() if k.startswith("loss_") and not torch.isfinite(v).all()]
            self._skip_or_stop(f"Non-finite loss at epoch {epoch}, step {step}: {', '.join(bad)} went "
                               "NaN/Inf.", last_good)
            return None
        self.accelerator.backward(loss / cfg.grad_accum)
        if apply:
            params = self._work.trainable_parameters()
            norm = sharding.as_plain(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf")))
            if self._deferred:
                self._flag(norm)
            elif not torch.isfinite(norm):
                self._skip_or_stop(f"Non-finite gradient at epoch {epoch}, step {step} "
                                   f"(loss {float(loss):.4g}).", last_good)
                return None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return out

    def _any(self, flag: bool | Tensor) -> bool:
        """``flag`` on any process (one all-reduce when there are several): decisions that
        change what every process does next (skip a batch, save a checkpoint) must agree."""
        flag = bool(flag)
        return sharding.agree(flag, self.device) if self.accelerator.num_processes > 1 else flag

    def _stopping(self, step: int | None = None) -> bool:
        """Whether a stop signal asks to save and stop. With several processes, every
        process must stop at the same step (under FSDP a checkpoint is a collective): they
        agree at epoch ends and every ``train.log_every`` steps."""
        if self.accelerator.num_processes == 1:
            return self._stop_signal is not None
        if step is not None and step % self.cfg.log_every:
            return False
        if self._any(self._stop_signal is not None):
            self._stop_signal = self._stop_signal or signal.SIGTERM
            return True
        return False

    # -- fast path -----------------------------------------------------------------------
    def _fast_path(self, distiller: Distiller) -> None:
        """``train.channels_last`` and ``train.compile`` on the student and the teacher's
        network(s), once, before the loop (the airbench recipe). ``Module.compile`` compiles
        in place, so state-dict keys and checkpoints are unchanged. ``compile_scope: step``
        compiles the distiller's forward instead (teacher + student + loss terms)."""
        teacher = distiller.teacher
        members = getattr(teacher, "members", None) or ([teacher] if teacher is not None else [])
        modules = [distiller.student] + [
            m.module for m in members if isinstance(getattr(m, "module", None), torch.nn.Module)]
        for m in modules:
            # fully_shard refuses NHWC-strided parameters: under FSDP the student keeps NCHW
            # weights (its convolutions still take NHWC batches) and the teacher goes NHWC
            if self.channels_last and not (self.fsdp and m is distiller.student):
                m.to(memory_format=torch.channels_last)
            if self.cfg.compile and self.cfg.compile_scope == "networks":
                m.compile(mode=self.cfg.compile_mode)
        if self.cfg.compile and self.cfg.compile_scope == "step":
            distiller.compile(mode=self.cfg.compile_mode)

    def _defer_nonfinite_checks(self) -> bool:
        """On CUDA a finiteness test is a host sync that stalls the GPU queue: accumulate a
        device flag instead and test it every ``train.log_every`` steps (skipping a bad step
        needs the answer at once, so ``on_nonfinite=skip`` keeps per-step tests)."""
        cfg = self.cfg
        return self.device.type == "cuda" and cfg.on_nonfinite == "stop" and cfg.log_every > 1

    def _flag(self, value: Tensor) -> None:
        bad = ~torch.isfinite(value.detach())
        self._bad = bad if self._bad is None else self._bad | bad

    def _check_flag(self, epoch: int, step: int, last_good) -> None:
        """Raise if a deferred finiteness flag tripped since the last check (one host sync)."""
        if self._bad is None:
            return
        bad, self._bad = bool(self._bad), None
        if bad:
            where = f"The last good checkpoint is {last_good}." if last_good else "No checkpoint saved yet."
            raise NonFiniteError(
                f"Non-finite loss or gradient at epoch {epoch}, within the {self.cfg.log_every} optimizer "
                f"steps before step {step} (checked every train.log_every steps on CUDA). {where} Lower "
                "train.lr, set train.grad_clip, or set train.on_nonfinite=skip (checks every step)."
            )

    def _skip_or_stop(self, what: str, last_good) -> None:
        """``train.on_nonfinite``: skip the batch (counted) or stop naming the last good checkpoint."""
        if self.cfg.on_nonfinite == "skip":
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            return
        where = f"The last good checkpoint is {last_good}." if last_good else "No checkpoint was saved yet."
        raise NonFiniteError(f"{what} {where} Lower train.lr, set train.grad_clip, or set train.on_nonfinite=skip.")

    def _state(self, st: _LoopState, epoch: int, batch: int) -> dict[str, Any]:
        """What a checkpoint records of the loop: the point to resume from (``epoch``,
        ``batch``), the step, the best epoch, the history and the training throughput so far."""
        return {"epoch": epoch, "batch": batch, "step": st.step, "best": st.best, "history": st.history,
                "skipped_steps": self.skipped_steps, "throughput": dict(st.throughput)}

    def _interrupt_message(self, path) -> str:
        name = signal.Signals(self._stop_signal).name
        return (f"Stopped by {name}; checkpoint saved at {path}. Resume with the same command plus "
                f"--resume (run folder {self.run_dir}).")


@dataclass
class _LoopState:
    """Where the epoch loop is: its plan (batches and optimizer steps per epoch, epochs, the
    learning-rate horizon ``total`` and ``warmup`` in steps) and its progress."""

    batches: int
    steps_per_epoch: int
    epochs: int
    total: int
    warmup: int
    epoch: int = 0
    start_batch: int = 0
    step: int = 0
    best: dict = field(default_factory=lambda: {"score": -1.0, "epoch": None, "metrics": None})
    history: list = field(default_factory=list)
    last_good: Any = None
    last_eval: dict | None = None
    #: training time from the steps alone (no evaluations, no checkpoint writes) and what it trained
    throughput: dict = field(default_factory=lambda: {"seconds": 0.0, "samples": 0, "tokens": 0})

    def budget_spent(self, max_steps: int) -> bool:
        return bool(max_steps) and self.step >= max_steps

    def add_throughput(self, seconds: float, samples: int, tokens: Tensor) -> None:
        t = self.throughput
        t["seconds"] += seconds
        t["samples"] += samples
        t["tokens"] += int(tokens)  # one host sync, per epoch and per checkpoint


def _timed(batches, waited: list[float]):
    """``batches``, adding the time each ``next`` blocks to ``waited[0]`` (host time: on CUDA
    the in-memory loader's gathers are only queued)."""
    it = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t
        yield batch


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{epochs}"]
    if "train_loss" in row:
        parts.append(f"loss {row['train_loss']:.4f}")
    for k in ("val_acc", "test_acc"):
        if k in row:
            parts.append(f"{k} {row[k]:.4f}")
    parts.append(f"{row['epoch_time_s']:.1f}s")
    return "  ".join(parts)
