"""The training loop: variant-correct flow matching on an encoded dataset, checkpoints, stop and resume."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..adapters.config import AdapterConfig
from ..adapters.metadata import AdapterMetadata
from ..adapters.training import TrainableAdapter, attach_trainable_adapter
from ..dataset.loader import ClipDataset, DatasetIndex, epoch_order, make_loader
from ..errors import AdapterError, TrainingError
from ..memory import return_freed_memory, trim_before_each, trim_freed_memory
from ..model import AceStepConditionGenerationModel, AceStepDiTModel
from ..variants import resolve_dtype
from . import distributed
from .config import TrainConfig
from .ema import AdapterEMA
from .events import EventCallback, StopSignal, TrainingEvent
from .tensorboard import RunLogger
from .objective import draw_cfg_keep_mask, draw_continuous_timesteps, draw_discrete_timesteps, flow_matching_loss
from .optim import build_optimizer, build_scheduler, load_optimizer_state, resume_notes
from .layout import RunLayout
from .runfolder import RunLock, recover_run_folder
from .validation import Validator, split_dataset, timestep_grid, training_index
from .checkpoints import (
    Progress,
    capture_rng,
    load_training_state,
    process_rng,
    resolve_resume_path,
    restore_process_rng,
    restore_rng,
    save_training_state,
    write_checkpoint_dir,
)

SMOOTHING = 0.9


@dataclass
class TrainResult:
    """How a run ended and where its adapter is."""

    status: str
    adapter_dir: Path
    last_checkpoint: Path | None
    global_step: int
    epochs_completed: int
    final_loss: float | None
    val_loss: float | None = None
    best_epoch: int | None = None
    best_val_loss: float | None = None

    def best_text(self) -> str:
        """'best epoch 3 (validation loss 0.4213)', or '' without validation."""
        if self.best_epoch is None:
            return ""
        return f"best epoch {self.best_epoch} (validation loss {self.best_val_loss:.4f})"


@dataclass
class RunIdentity:
    """What the adapter is for: the model it was trained on and the dataset."""

    variant: str
    base: str
    model_name: str = ""


PreviewFn = Callable[[int, AceStepConditionGenerationModel], str]


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting on `device` (None: compute in the weights' own dtype)."""
    dtype = resolve_dtype(precision, device)
    return None if dtype == torch.float32 else dtype


@dataclass
class TrainingStep:
    """The trainer's step, reusable outside a run (the benchmarks time it): the flow-matching loss of a batch for
    given draws under the run's precision, and its backward pass. `update` then applies the gradients."""

    decoder: AceStepDiTModel
    compute_dtype: torch.dtype | None = None
    null_condition: torch.Tensor | None = None
    min_snr_gamma: float | None = None
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        self.device = next(self.decoder.parameters()).device

    def loss(
        self, batch: dict[str, torch.Tensor], noise: torch.Tensor, t: torch.Tensor, keep: torch.Tensor | None = None,
        per_sample: bool = False,
    ) -> torch.Tensor:
        """The loss of `batch` for noise `noise` at timesteps `t` (`keep`: rows that keep their condition; `per_sample`:
        each row's unweighted loss)."""
        batch = {key: value.to(self.device) for key, value in batch.items()}
        autocast = torch.autocast(self.device.type, dtype=self.compute_dtype) if self.compute_dtype else nullcontext()
        with autocast:
            return flow_matching_loss(
                self.decoder,
                batch,
                noise.to(self.device),
                t.to(self.device),
                None if keep is None else keep.to(self.device),
                self.null_condition,
                self.min_snr_gamma,
                per_sample,
            )

    def backward(
        self, batch: dict[str, torch.Tensor], noise: torch.Tensor, t: torch.Tensor, keep: torch.Tensor | None = None,
        share: int = 1,
    ) -> torch.Tensor:
        """Back-propagate the loss divided by `share` (the batches summed into one update); returns the loss."""
        loss = self.loss(batch, noise, t, keep)
        (loss / share).backward()
        return loss.detach()


def update(parameters: Iterable[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float) -> torch.Tensor:
    """Clip the gradients, step the optimiser (and the scheduler, if any) and clear the gradients; returns the norm
    the gradients had before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


class Trainer:
    """Trains one adapter on `model.decoder`; reports through `callback`, honours `stop`, resumes from checkpoints."""

    def __init__(
        self,
        model: AceStepConditionGenerationModel,
        dataset: str | Path | DatasetIndex,
        adapter_config: AdapterConfig,
        config: TrainConfig,
        identity: RunIdentity,
        callback: EventCallback | None = None,
        stop: StopSignal | None = None,
        preview: PreviewFn | None = None,
    ) -> None:
        if identity.base not in ("turbo", "base", "sft"):
            raise TrainingError(f"Unknown base model {identity.base!r}; name it as turbo, base or sft.")
        self.model = model
        self.decoder = model.decoder
        self.adapter_config = adapter_config
        self.config = config
        self.identity = identity
        self.callback = callback or (lambda event: None)
        self.stop = stop or StopSignal()
        self.preview = preview
        self.output_dir = Path(config.output_dir)
        self.layout = RunLayout(self.output_dir)
        self.device = next(self.decoder.parameters()).device
        self.rank, self.world = distributed.rank_and_world()
        self.dataset = ClipDataset(dataset, config.max_latent_frames, config.seed)
        self.dataset_hash = self.dataset.index.content_hash
        self._check_dataset_variant()
        self.split = split_dataset(self.dataset.index, config)
        if self.split.held_out:
            self.dataset = ClipDataset(training_index(self.dataset.index, self.split), config.max_latent_frames, config.seed)
        self.timestep_mode = config.resolved_timestep_mode(identity.base)
        self.cfg_ratio = config.resolved_cfg_ratio(identity.base)
        self.generator = torch.Generator().manual_seed(config.seed + 7919 * self.rank)
        self.progress = Progress()
        self.adapter: TrainableAdapter | None = None
        self.step = TrainingStep(self.decoder, compute_dtype(config.precision, self.device), model.null_condition_emb,
                                 config.min_snr_gamma)
        grid = timestep_grid(self.timestep_mode, model.config.timestep_mu, model.config.timestep_sigma,
                             config.continuous_draws == "max_of_two")
        self.validator = Validator(self.split, grid, config.seed, config.max_latent_frames)
        self.ema: AdapterEMA | None = None

    # ------------------------------------------------------------------ set-up

    def _check_dataset_variant(self) -> None:
        manifest = self.dataset.manifest
        if manifest is not None and manifest.model_variant not in (self.identity.variant, ""):
            raise TrainingError(
                f"The dataset in {self.dataset.folder} was encoded with the '{manifest.model_variant}' model, but you are "
                f"training '{self.identity.variant}'. Encode the dataset with the model you train (its condition encoder differs)."
            )

    def _batches_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.dataset) / self.world)
        return math.ceil(per_rank / self.config.batch_size)

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (the last accumulation group of an epoch may be short)."""
        return math.ceil(self._batches_per_epoch() / self.config.gradient_accumulation)

    def validation_record(self, weights_epoch: int | None = None) -> dict | None:
        """The validation part of the metadata: what is scored, the epoch of the weights (default: now) and their
        loss, the best checkpoint so far and the whole curve; None when validation is off."""
        if not self.validator:
            return None
        best = self.progress.best()
        epoch = self.progress.epoch if weights_epoch is None else weights_epoch
        losses = dict((int(e), loss) for e, loss in self.progress.checkpoint_losses)
        loss = self.progress.validated_at(self.progress.global_step) if weights_epoch is None else losses.get(epoch)
        return {
            **self.split.record(),
            "timesteps": list(self.validator.grid),
            "weights_epoch": epoch,
            "loss": loss,
            "best_epoch": best and best[0],
            "best_loss": best and best[1],
            "ema_decay": self.config.ema_decay,
            "history": [list(point) for point in self.progress.validation],
        }

    def metadata(self, weights_epoch: int | None = None) -> AdapterMetadata:
        """What travels inside the adapter files: model, schedule for inference, dataset, settings and validation."""
        shift, steps = self.config.inference_defaults(self.identity.base)
        return AdapterMetadata(
            sidestep_version=__version__,
            model_name=self.identity.model_name,
            variant=self.identity.variant,
            base=self.identity.base,
            shift=float(shift),
            num_inference_steps=steps,
            dataset_hash=self.dataset_hash,
            epochs=self.progress.epoch,
            global_step=self.progress.global_step,
            timestep_mode=self.timestep_mode,
            cfg_ratio=self.cfg_ratio,
            adapter_config=self.adapter_config,
            train_config=self.config.to_dict(),
            validation=self.validation_record(weights_epoch),
        )

    # ------------------------------------------------------------------ one step

    def _draw_timesteps(self, batch: int) -> torch.Tensor:
        if self.timestep_mode == "discrete":
            return draw_discrete_timesteps(batch, generator=self.generator)
        config = self.model.config
        return draw_continuous_timesteps(
            batch, config.timestep_mu, config.timestep_sigma, self.config.continuous_draws == "max_of_two", self.generator
        )

    def _backward(self, batch: dict[str, torch.Tensor], share: int) -> torch.Tensor:
        """Draw this batch's condition dropout, noise and timesteps, then take the step's backward pass."""
        size = batch["target_latents"].shape[0]
        keep = draw_cfg_keep_mask(size, self.cfg_ratio, self.generator)
        noise = torch.randn(batch["target_latents"].shape, generator=self.generator)
        t = self._draw_timesteps(size)
        return self.step.backward(batch, noise, t, keep if self.cfg_ratio > 0 else None, share)

    # ------------------------------------------------------------------ checkpoints

    def _averaged(self):
        """The weights to score, preview and save: the moving average while the block runs when it is on."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    def _save_adapter(self, folder: Path) -> None:
        with self._averaged():
            self.adapter.save(folder, self.metadata().to_header())

    def _save_best(self, folder: Path, epoch: int) -> None:
        """Write the adapter files of checkpoint `epoch` (the weights its validation loss was measured on) into
        `folder`, their metadata saying which epoch they are."""
        from safetensors.torch import load_file

        from ..adapters.files import resolve_adapter_path

        trained = {key: value.clone() for key, value in self.adapter.state_dict().items()}
        self.adapter.load_state_dict(load_file(str(resolve_adapter_path(self.layout.checkpoint(epoch)))))
        try:
            self.adapter.save(folder, self.metadata(weights_epoch=epoch).to_header())
        finally:
            self.adapter.load_state_dict(trained)

    def save_checkpoint(self, optimizer, scheduler) -> Path:
        """Write `checkpoints/epoch_N/` (adapter files + training_state.pt) atomically; rank 0 only."""
        folder = self.layout.checkpoint(self.progress.epoch)
        if not distributed.check_in_sync(self.adapter.parameters()):
            raise TrainingError("The training processes hold different adapter weights; data-parallel training went out of sync.")
        if self.rank == 0:
            state = {
                "progress": vars(self.progress).copy(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "adapter": {k: v.detach().cpu() for k, v in self.adapter.state_dict().items()},
                "adapter_config": self.adapter_config.to_dict(),
                "train_config": self.config.to_dict(),
                "identity": vars(self.identity).copy(),
                "rng": capture_rng(self.generator),
                "world_size": self.world,
                "validation": self.split.record(),
            }
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()

            def fill(staging: Path) -> None:
                self._save_adapter(staging)
                save_training_state(staging, state)

            write_checkpoint_dir(folder, fill, self.output_dir)
        distributed.barrier()
        return folder

    def save_final(self) -> Path:
        """Write the inference-ready adapter to `final/` atomically (with `final_from_best`, the saved checkpoint with
        the lowest validation loss); rank 0 only."""
        folder = self.layout.final
        if self.rank == 0:
            best = self._final_best()
            fill = self._save_adapter if best is None else (lambda staging: self._save_best(staging, best))
            write_checkpoint_dir(folder, fill, self.output_dir)
        distributed.barrier()
        return folder

    def _final_best(self) -> int | None:
        """The epoch final/ is taken from when it is not the last one."""
        best = self.progress.best() if self.config.final_from_best else None
        if best is None or best[0] == self.progress.epoch and self.progress.batch_in_epoch == 0:
            return None
        return best[0]

    def _resume(self, optimizer, scheduler, notes: list[str]) -> Path:
        folder = resolve_resume_path(self.config.resume_from)
        state = load_training_state(folder)
        try:
            saved = AdapterConfig.from_dict(state["adapter_config"])
        except (AdapterError, TypeError) as error:
            raise TrainingError(f"The checkpoint {folder} holds unusable adapter settings ({error}); resume from another one.") from error
        done = state["progress"]["epoch"]
        if done >= self.config.epochs:
            raise TrainingError(
                f"The checkpoint {folder} has already completed {done} epochs, and this run asks for {self.config.epochs}. "
                f"Ask for more epochs (for example {done + 10}) to train on, or use that checkpoint's adapter as it is."
            )
        if saved.shape_signature() != self.adapter_config.shape_signature():
            raise TrainingError(
                f"The checkpoint {folder} was trained as {saved.describe()}, but this run asks for "
                f"{self.adapter_config.describe()}. Resume with the same adapter type and rank, or start a new run."
            )
        if state.get("world_size", 1) != self.world:
            raise TrainingError(
                f"The checkpoint {folder} was written by {state.get('world_size', 1)} processes; resume with the same number."
            )
        try:
            self.adapter.load_state_dict(state["adapter"])
            load_optimizer_state(optimizer, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            self.progress = Progress(**state["progress"])
            restore_rng(state["rng"], self.generator)
            if self.ema is not None and "ema" in state:
                self.ema.load_state_dict(state["ema"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise TrainingError(f"Cannot restore everything from {folder} ({exc}); refusing to restart silently.") from exc
        saved_split = state.get("validation", self.split.record())
        if saved_split != self.split.record():
            raise TrainingError(
                f"The checkpoint {folder} scored the validation loss on {saved_split.get('clips')}, but this run would "
                f"score {self.split.record()['clips']}. Resume with the same dataset and validation setting."
            )
        if self.ema is not None and "ema" not in state:
            notes.append(f"{folder} holds no weight average; it starts from the resumed weights.")
        notes.append(f"resumed from {folder} (epoch {self.progress.epoch}, step {self.progress.global_step})")
        notes += resume_notes(state["train_config"], self.config, self.progress.global_step, self.steps_per_epoch())
        return folder

    # ------------------------------------------------------------------ the loop

    def _emit(self, kind: str, started: float, samples: int, **fields) -> None:
        elapsed = time.monotonic() - started
        total = self.config.epochs * self.steps_per_epoch()
        done_here = max(self.progress.global_step - self._start_step, 0)
        eta = elapsed / done_here * (total - self.progress.global_step) if done_here else None
        event = TrainingEvent(
            kind=kind,
            step=self.progress.global_step,
            total_steps=total,
            epoch=self.progress.epoch,
            total_epochs=self.config.epochs,
            smoothed_loss=self.progress.smoothed_loss,
            samples_per_second=samples / elapsed if elapsed > 0 and samples else None,
            elapsed_seconds=elapsed,
            eta_seconds=eta,
            **self._best_fields(),
            **fields,
        )
        if self.rank == 0:
            self.callback(event)

    def _best_fields(self) -> dict:
        best = self.progress.best()
        return {"best_epoch": best[0], "best_val_loss": best[1]} if best else {}

    def run(self) -> TrainResult:
        """Train to the configured number of epochs, or until stopped; always leaves a usable adapter behind.

        The run folder is locked for the whole run (a second writer is refused) and repaired first after a kill. The
        process-wide generators the run seeds (torch, Python, NumPy) are given back as they were when it ends.
        """
        host_rng = process_rng()
        lock = self._lock_run_folder()
        try:
            if lock is not None:
                self._repairs = (*lock.warnings, *recover_run_folder(self.output_dir))
            return self._run()
        finally:
            if lock is not None:
                lock.release()
            restore_process_rng(host_rng)

    def _lock_run_folder(self) -> RunLock | None:
        """Rank 0 takes the run folder's lock; every rank fails together when it cannot."""
        lock, refused = None, None
        if self.rank == 0:
            try:
                lock = RunLock(self.output_dir).acquire()
            except TrainingError as error:
                refused = error
        if distributed.any_true(refused is not None):
            if lock is not None:
                lock.release()
            raise refused or TrainingError(f"The first training process could not take the run folder {self.output_dir}.")
        return lock

    _repairs: tuple[str, ...] = ()

    def _run(self) -> TrainResult:
        torch.manual_seed(self.config.seed)
        random.seed(self.config.seed)
        np.random.seed(self.config.seed % 2**32)
        return_freed_memory()
        self.decoder.requires_grad_(False)
        self.adapter = attach_trainable_adapter(self.decoder, self.adapter_config)
        self.decoder.gradient_checkpointing = self.config.gradient_checkpointing
        self.decoder.train()
        optimizer, notes = build_optimizer(self.adapter.parameters(), self.config, self.device)
        if self.config.ema_decay:
            self.ema = AdapterEMA(self.adapter.parameters(), self.config.ema_decay)
        total_steps = self.config.epochs * self.steps_per_epoch()
        scheduler = build_scheduler(optimizer, total_steps, self.config)
        last_checkpoint = self._resume(optimizer, scheduler, notes) if self.config.resume_from else None
        self._start_step = self.progress.global_step
        logger = self._logger = RunLogger(
            Path(self.config.log_dir) if self.config.log_dir else self.layout.tensorboard,
            enabled=self.rank == 0,
            purge_step=self.progress.global_step + 1 if last_checkpoint else None,
        )
        started = time.monotonic()
        samples = 0
        for note in [*self._repairs, *notes, self.split.describe()]:
            self._emit("note", started, 0, message=note)
        # On the CPU each layer's activations would otherwise take fresh heap pages (see sidestep/memory.py).
        untrim = trim_before_each(self.decoder.layers) if self.device.type == "cpu" else lambda: None
        try:
            if not self.progress.validation:
                self._validate(started, 0)
            status = self._train_epochs(optimizer, scheduler, logger, started, samples)
        except TrainingError as error:
            self._emit("failed", started, 0, message=str(error))
            raise
        finally:
            untrim()
            logger.close()
            self.decoder.eval()
        if status == "stopped":
            last_checkpoint = self._checkpoint(optimizer, scheduler, started, 0)
        adapter_dir = self.save_final()
        best = self.progress.best()
        result = TrainResult(
            status=status,
            adapter_dir=adapter_dir,
            last_checkpoint=last_checkpoint or self._last_checkpoint,
            global_step=self.progress.global_step,
            epochs_completed=self.progress.epoch,
            final_loss=self.progress.smoothed_loss,
            val_loss=self.progress.validation[-1][1] if self.progress.validation else None,
            best_epoch=best and best[0],
            best_val_loss=best and best[1],
        )
        source = self._final_best()
        text = "; ".join(filter(None, [
            self.stop.reason if status == "stopped" else "",
            result.best_text(),
            f"final/ holds epoch {source}" if source is not None else "",
        ]))
        self._emit(status, started, 0, adapter_path=str(adapter_dir), message=text, val_loss=result.val_loss)
        return result

    _last_checkpoint: Path | None = None
    _logger: RunLogger | None = None

    def _validate(self, started: float, samples: int) -> float | None:
        """Score the weights now in the model (once per step; rank 0 only): history, TensorBoard and an event."""
        if not self.validator or self.rank != 0:
            return None
        step = self.progress.global_step
        measured = self.progress.validated_at(step)
        if measured is not None:
            return measured
        self.decoder.eval()
        try:
            with self._averaged():
                result = self.validator.evaluate(self.step)
        finally:
            self.decoder.train()
        self.progress.validation.append([step, result.loss])
        self._logger.scalars(step, **result.scalars())
        self._emit("validation", started, samples, val_loss=result.loss)
        return result.loss

    def _checkpoint(self, optimizer, scheduler, started: float, samples: int) -> Path:
        """Score the weights, record the score as this checkpoint's (for the best epoch), save and report it."""
        loss = self._validate(started, samples)
        epoch = self.progress.epoch
        self.progress.checkpoint_losses = [pair for pair in self.progress.checkpoint_losses if pair[0] != epoch]
        if loss is not None and math.isfinite(loss):
            self.progress.checkpoint_losses.append([epoch, loss])
        self._last_checkpoint = self.save_checkpoint(optimizer, scheduler)
        self._emit("checkpoint", started, samples, checkpoint_path=str(self._last_checkpoint), val_loss=loss)
        return self._last_checkpoint

    def _train_epochs(self, optimizer, scheduler, logger: RunLogger, started: float, samples: int) -> str:
        accumulation = self.config.gradient_accumulation
        while self.progress.epoch < self.config.epochs:
            epoch = self.progress.epoch
            order = distributed.shard(epoch_order(len(self.dataset), self.config.seed, epoch), self.rank, self.world)
            self.dataset.set_epoch(epoch)
            batches = [order[i : i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
            skip = self.progress.batch_in_epoch
            flat = [index for group in batches[skip:] for index in group]
            loader = iter(make_loader(self.dataset, flat, self.config.batch_size, self.config.num_workers))
            epoch_losses: list[float] = []
            position = skip
            while position < len(batches):
                group_end = min(len(batches), (position // accumulation + 1) * accumulation)
                group_size = group_end - position
                losses = []
                for _ in range(group_size):
                    batch = next(loader)
                    losses.append(self._backward(batch, group_size))
                    samples += batch["target_latents"].shape[0]
                position = group_end
                step_loss = distributed.mean(torch.stack(losses).mean())
                distributed.average_gradients(self.adapter.parameters())
                self.progress.batch_in_epoch = position
                if not torch.isfinite(step_loss):
                    optimizer.zero_grad(set_to_none=True)
                    self.progress.nan_streak += 1
                    self._emit("note", started, samples, message=f"non-finite loss at step {self.progress.global_step}; step skipped")
                    if self.progress.nan_streak >= self.config.nan_patience:
                        self._last_checkpoint = self.save_checkpoint(optimizer, scheduler)
                        raise TrainingError(
                            f"The loss was not finite for {self.progress.nan_streak} steps in a row; training stopped and "
                            f"saved {self._last_checkpoint}. Lower the learning rate or use fp32/bf16 precision, then resume."
                        )
                    continue
                self.progress.nan_streak = 0
                grad_norm = update(self.adapter.parameters(), optimizer, scheduler, self.config.max_grad_norm)
                if self.ema is not None:
                    self.ema.update()
                trim_freed_memory()
                self.progress.global_step += 1
                value = float(step_loss)
                epoch_losses.append(value)
                previous = self.progress.smoothed_loss
                self.progress.smoothed_loss = value if previous is None else SMOOTHING * previous + (1 - SMOOTHING) * value
                lr = scheduler.get_last_lr()[0]
                if self.progress.global_step % self.config.log_every == 0:
                    logger.scalars(self.progress.global_step, loss=value, lr=lr, grad_norm=float(grad_norm))
                self._emit("step", started, samples, loss=value, lr=lr, grad_norm=float(grad_norm))
                every = self.config.validation_every
                if every and self.progress.global_step % every == 0:
                    self._validate(started, samples)
                if distributed.any_true(self.stop.requested):
                    return "stopped"
            self.progress.epoch += 1
            self.progress.batch_in_epoch = 0
            epoch_loss = sum(epoch_losses) / len(epoch_losses) if epoch_losses else None
            if epoch_loss is not None:
                logger.scalars(self.progress.global_step, epoch_loss=epoch_loss)
            self._emit("epoch", started, samples, loss=epoch_loss)
            if not self.config.validation_every:
                self._validate(started, samples)
            if self.progress.epoch % self.config.save_every == 0 or self.progress.epoch == self.config.epochs:
                self._checkpoint(optimizer, scheduler, started, samples)
            if self.preview and self.config.preview_every and self.progress.epoch % self.config.preview_every == 0:
                self._run_preview(started, samples, epoch_loss)
        return "finished"

    def _run_preview(self, started: float, samples: int, epoch_loss: float | None) -> None:
        if self.rank != 0:
            return
        self.decoder.eval()
        try:
            with torch.no_grad(), self._averaged():
                path = self.preview(self.progress.epoch, self.model)
        finally:
            self.decoder.train()
        self._emit("preview", started, samples, preview_path=str(path), loss=epoch_loss)
