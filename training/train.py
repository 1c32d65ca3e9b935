"""UniID identity-focused training of one branch (stage "text" or "adapter") with accelerate.

`accelerate launch -m training.train --config FILE.yaml [--resume latest] [--set key=value ...]`
Resubmitting the same command with `--resume latest` continues a run until max_train_steps and exports
once; `max_steps_per_run` / `max_run_minutes` end one invocation early (with a checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.checkpointing import (
    EMA_FILE,
    FINISHED_FILE,
    UNIID_FILE,
    TrainerState,
    check_merge_source,
    check_resume_layout,
    export_uniid,
    list_checkpoints,
    load_branch_weights,
    load_ema,
    read_finished,
    read_trainer_state,
    resolve_resume,
    save_checkpoint,
    save_ema,
    set_aside_newer,
    write_finished,
)
from training.components import (
    BaseModels,
    PromptCache,
    UniIDTrainingModule,
    base_problem,
    build_stage_model,
    draw_feature_dropout,
    load_base,
    mask_features,
    time_ids,
)
from training.config import TrainConfig, load_config
from training.data import (
    ContinuousBatches,
    FaceDataset,
    ResumableBatchSampler,
    collate,
    faces_uint8_to_input,
    pixels_to_unit_range,
)
from training.run_lock import OutputDirLock
from uniid_core.checkpoint import load_face_net, save_uniid
from uniid_core.cli import argument_parser, path_problem, require_paths, run_cli
from uniid_core.diffusers_processor import install_uniid_processors
from uniid_core.errors import CheckpointError, UniIDError


@dataclass
class TrainResult:
    """What a run did: logged (step, loss) pairs, the final step, checkpoint and export paths.

    `export` is the file this invocation exported (None when it stopped early or had nothing to do).
    """

    losses: list[tuple[int, float]] = field(default_factory=list)
    global_step: int = 0
    checkpoint: Path | None = None
    export: Path | None = None


def sample_generators(seed: int, micro_step: int, first: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample: a pure function of seed, micro-step and place in the global micro-batch.

    `first` is this process's first position (rank x per-process batch). Resuming, or splitting the same
    global micro-batch over another number of processes, replays the exact noise, timesteps, dropout and
    latent samples of every sample.
    """
    base = (seed * 1_000_003 + micro_step) * 1_000_033
    return [torch.Generator().manual_seed(base + first + j) for j in range(count)]


def per_sample(
    generators: list[torch.Generator], draw: Callable[[torch.Generator], torch.Tensor]
) -> torch.Tensor:
    """Stack one draw per sample, each from that sample's generator."""
    return torch.stack([draw(g) for g in generators])


class Trainer:
    """One training run: builds everything from a TrainConfig, then loops, checkpoints and exports."""

    def __init__(
        self, cfg: TrainConfig, face_net: torch.nn.Module | None = None, base: BaseModels | None = None
    ) -> None:
        """Create the accelerator, models, data, optimizer, scheduler and checkpoint hooks.

        `face_net` / `base` replace loading cfg.face_net / cfg.base (tests and benchmarks inject
        random-weight models built in memory).
        """
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.started = time.monotonic()

        missing = [
            k
            for k in ("dataset",)
            + (("base",) if base is None else ())
            + (("face_net",) if face_net is None else ())
            if not getattr(cfg, k)
        ]
        if missing:
            raise UniIDError(f"set {', '.join(missing)} in the training config (see training/configs/*.yaml)")
        require_paths(
            base_problem(cfg.base) if base is None else None,
            path_problem("merge_with", cfg.merge_with, "file") if cfg.merge_with else None,
        )
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        project = ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs"))
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=cfg.report_to or None,
            project_config=project,
            step_scheduler_with_optimizer=False,
        )
        self.lock = OutputDirLock(self.out)
        if self.accelerator.is_main_process:
            self.lock.acquire()
        try:
            self._build(face_net, base)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, face_net: torch.nn.Module | None, base: BaseModels | None) -> None:
        """The rest of __init__, once this job holds the output folder: data, models, optimizer, hooks."""
        from accelerate.utils import DistributedType, set_seed

        cfg, acc = self.cfg, self.accelerator
        self.deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        set_seed(cfg.seed)
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.device = acc.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            acc.mixed_precision, torch.float32
        )

        self.dataset = FaceDataset(cfg.dataset, cfg.resolution, cfg.use_cached_latents)
        self.base = base if base is not None else load_base(cfg.base)
        base = self.base
        base.unet.to(self.device, self.weight_dtype)
        vae_dtype = (
            torch.float32 if self.weight_dtype == torch.float16 and base.vae.config.force_upcast else None
        )
        self.vae_dtype = vae_dtype or self.weight_dtype
        base.vae.to(self.device, self.vae_dtype)
        base.text_encoder.to(self.device, self.weight_dtype)
        base.text_encoder_2.to(self.device, self.weight_dtype)
        self.prompts = PromptCache(cfg.prompt_template, base, self.dataset.class_words(), self.device)
        if face_net is None:
            face_net = load_face_net(cfg.face_net, dtype=self.weight_dtype, device=self.device)
        self.face_net = face_net.to(self.device, self.weight_dtype).eval().requires_grad_(False)

        encoders = (base.text_encoder, base.text_encoder_2)
        self.uniid = build_stage_model(cfg, base.unet, encoders).to(self.device)
        if cfg.merge_with:
            check_merge_source(Path(cfg.merge_with), self.uniid.config)
        if cfg.stage == "adapter":
            install_uniid_processors(base.unet, self.uniid, rescale="add", scale=1.0)
        if cfg.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
        self.module = UniIDTrainingModule(self.uniid, base.unet, cfg.stage)
        branch = self.module.trainable_branch()
        branch.requires_grad_(True)
        branch.train()
        self.params = [p for p in branch.parameters() if p.requires_grad]

        self.sampler = ResumableBatchSampler(
            len(self.dataset), cfg.train_batch_size, cfg.seed, acc.process_index, acc.num_processes
        )
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=ContinuousBatches(self.sampler),
            collate_fn=collate,
            num_workers=cfg.dataloader_num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ignore_sigterm,
        )
        # Accumulation counts micro-batches across epoch ends, so a step may span two epochs.
        micro_batches = cfg.num_train_epochs * self.sampler.batches_per_epoch()
        self.max_steps = cfg.max_train_steps or max(1, micro_batches // cfg.gradient_accumulation_steps)

        from diffusers.optimization import get_scheduler

        optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            eps=cfg.adam_epsilon,
        )
        scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=self.max_steps,
        )
        self.ema = None
        if cfg.use_ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=cfg.ema_decay)
            self.ema.to(self.device)
        if self.deepspeed:
            configure_deepspeed(acc, cfg)
        self.model, self.optimizer, self.scheduler = acc.prepare(self.module, optimizer, scheduler)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self.state = TrainerState(**self.layout())
        self.result = TrainResult()
        self.validator = None
        if cfg.validation_steps > 0 and acc.is_main_process:
            from training.validation import Validator

            self.validator = Validator(self)

    def _save_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        """Save only the trained branch (unwrapped, single-file UniID format) and EMA, not the UNet."""
        if self.accelerator.is_main_process:
            self.uniid.refresh_fingerprint()
            save_uniid(self.uniid, str(Path(output_dir) / UNIID_FILE))
            if self.ema is not None:
                save_ema(self.ema, Path(output_dir) / EMA_FILE)
        weights.clear()

    def _load_hook(self, models: list[Any], input_dir: str) -> None:
        """Restore what _save_hook saved; accelerate then restores optimizer, scheduler and RNG."""
        models.clear()
        load_branch_weights(self.uniid, Path(input_dir) / UNIID_FILE)
        if self.ema is not None:
            load_ema(self.ema, Path(input_dir) / EMA_FILE)

    def layout(self) -> dict[str, int]:
        """Processes, per-process batch, accumulation and dataset size: what decides each step's samples."""
        return {
            "world_size": self.accelerator.num_processes,
            "train_batch_size": self.cfg.train_batch_size,
            "gradient_accumulation_steps": self.cfg.gradient_accumulation_steps,
            "num_samples": len(self.dataset),
        }

    def resume(self) -> None:
        """Load the requested checkpoint, if any, and its data position; refuse a layout that cannot continue.

        Without resume_from_checkpoint, an output_dir that already holds checkpoints is refused (it would
        mix two runs).
        """
        root = self.out / "checkpoints"
        path = resolve_resume(root, self.cfg.resume_from_checkpoint)
        if path is None:
            existing = list_checkpoints(root)
            if existing:
                raise CheckpointError(
                    f"{self.out} already holds checkpoints (latest {existing[-1].name}): continue that run "
                    "with --resume latest, or choose a new output_dir"
                )
            if self.accelerator.is_main_process:
                (self.out / FINISHED_FILE).unlink(missing_ok=True)
                if self.cfg.resume_from_checkpoint:
                    print(f"no checkpoint in {root} yet: starting from scratch", file=sys.stderr)
            return
        saved = read_trainer_state(path)
        note = check_resume_layout(saved, TrainerState(**self.layout()), path)
        self.accelerator.load_state(str(path), **self._checkpoint_kwargs(loading=True))
        self.state = dataclasses.replace(saved, **self.layout())
        changed = self.apply_optimizer_settings()
        if self.accelerator.is_main_process:
            print(f"resumed from {path} at step {self.state.global_step}", file=sys.stderr)
            if note:
                print(note, file=sys.stderr)
            if changed:
                print(
                    f"the config changes {', '.join(changed)} (the checkpoint's optimizer had the old "
                    f"values): the new values apply from step {self.state.global_step + 1}",
                    file=sys.stderr,
                )
            self.abandon_newer(root, path)
        self.accelerator.wait_for_everyone()

    def abandon_newer(self, root: Path, resumed: Path) -> None:
        """Resuming an older checkpoint: set the abandoned run's newer checkpoints aside, drop its finish.

        The new line of training then writes its own checkpoints, `--resume latest` continues it, and it
        exports when it reaches max_train_steps (the abandoned export is overwritten then).
        """
        step = self.state.global_step
        moved = set_aside_newer(root, resumed, step)
        finished = read_finished(self.out)
        if moved or (finished is not None and finished["global_step"] > step):
            (self.out / FINISHED_FILE).unlink(missing_ok=True)
        if moved:
            print(
                f"resumed an older checkpoint (step {step}): the newer checkpoints of the abandoned run "
                f"are kept, renamed to {', '.join(p.name for p in moved)}; this run writes its own "
                "checkpoints and export",
                file=sys.stderr,
            )

    def apply_optimizer_settings(self) -> list[str]:
        """Make the config's AdamW settings win over the resumed ones; returns the changes ('key old -> new').

        load_state restores the optimizer's param groups and the scheduler's base learning rates, so
        without this a changed learning_rate, weight_decay, Adam betas or epsilon would be ignored.
        """
        cfg = self.cfg
        groups = self.optimizer.param_groups
        scheduler = self.scheduler.scheduler
        resumed = {
            "learning_rate": scheduler.base_lrs[0],
            "weight_decay": groups[0]["weight_decay"],
            "adam_beta1": groups[0]["betas"][0],
            "adam_beta2": groups[0]["betas"][1],
            "adam_epsilon": groups[0]["eps"],
        }
        changed = [f"{k} {v:g} -> {getattr(cfg, k):g}" for k, v in resumed.items() if v != getattr(cfg, k)]
        if not changed:
            return []
        scheduler.base_lrs = [cfg.learning_rate] * len(groups)
        rates = [
            base * rule(scheduler.last_epoch)
            for rule, base in zip(scheduler.lr_lambdas, scheduler.base_lrs, strict=True)
        ]
        for group, rate in zip(groups, rates, strict=True):
            group.update(
                lr=rate,
                initial_lr=cfg.learning_rate,
                weight_decay=cfg.weight_decay,
                betas=(cfg.adam_beta1, cfg.adam_beta2),
                eps=cfg.adam_epsilon,
            )
        return changed

    def _checkpoint_kwargs(self, loading: bool) -> dict[str, Any]:
        """DeepSpeed: store only the trained branch and its optimizer state, not the frozen UNet."""
        if not self.deepspeed:
            return {}
        return {"load_module_strict": False} if loading else {"exclude_frozen_parameters": True}

    def target_latents(self, batch: dict[str, Any], generators: list[torch.Generator]) -> torch.Tensor:
        """Scaled VAE latents of the 512x512 targets: sampled from cached (mean, std) or encoded now."""
        vae = self.base.vae
        if "latent_mean" in batch:
            mean = batch["latent_mean"].float()
            noise = per_sample(generators, lambda g: torch.randn(mean.shape[1:], generator=g))
            latents = (mean + batch["latent_std"].float() * noise).to(self.device)
        else:
            pixels = pixels_to_unit_range(batch["pixels"].to(self.device)).to(self.vae_dtype)
            with torch.no_grad():
                dist = vae.encode(pixels).latent_dist
            noise = per_sample(generators, lambda g: torch.randn(dist.mean.shape[1:], generator=g))
            latents = (dist.mean + dist.std * noise.to(self.device, dist.mean.dtype)).float()
        return latents * vae.config.scaling_factor

    def compute_loss(self, batch: dict[str, Any], generators: list[torch.Generator]) -> torch.Tensor:
        """eps-MSE of one micro-batch; each sample's randomness comes from its generator in a fixed order."""
        cfg = self.cfg
        rates = (cfg.adapter_drop_rate, cfg.text_drop_rate, cfg.both_drop_rate)
        keeps = [draw_feature_dropout(1, g, *rates) for g in generators]
        keep_text = torch.cat([k[0] for k in keeps])
        keep_adapter = torch.cat([k[1] for k in keeps])
        latents = self.target_latents(batch, generators)
        noise = per_sample(generators, lambda g: torch.randn(latents.shape[1:], generator=g)).to(self.device)
        steps = self.base.noise_scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(
            self.device
        )
        noisy = self.base.noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            faces = faces_uint8_to_input(batch["face"].to(self.device)).to(self.weight_dtype)
            features = self.face_net(faces)
        features = mask_features(features, keep_text if cfg.stage == "text" else keep_adapter)
        prompt_embeds, pooled = self.prompts(batch["class_word"])
        add_time_ids = time_ids(batch["original_size"].to(self.device), cfg.resolution).to(self.weight_dtype)
        pred = self.model(
            noisy.to(self.weight_dtype), timesteps, prompt_embeds, pooled, add_time_ids, features
        )
        return F.mse_loss(pred.float(), noise.float())

    def generators(self) -> list[torch.Generator]:
        """This process's per-sample generators for the next micro-batch."""
        batch = self.cfg.train_batch_size
        first = self.accelerator.process_index * batch
        return sample_generators(self.cfg.seed, self.state.micro_step, first, batch)

    def checkpoint(self) -> None:
        """Atomic checkpoint of the current state."""
        self.result.checkpoint = save_checkpoint(
            self.accelerator,
            self.out / "checkpoints",
            self.state,
            self.cfg.to_dict(),
            self.cfg.checkpoints_total_limit,
            self._checkpoint_kwargs(loading=False),
        )

    def export(self) -> Path:
        """Single-file UniID export of the trained branch (EMA weights when EMA is on), merged if asked."""
        path = Path(self.cfg.export_path or self.out / f"uniid_{self.cfg.stage}.safetensors")
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        try:
            export_uniid(self.uniid, path, self.cfg.merge_with)
        finally:
            if self.ema is not None:
                self.ema.restore(self.params)
        return path

    def finish(self) -> None:
        """At max_train_steps: export once (main process) and record it, so a resubmission does nothing."""
        acc = self.accelerator
        finished = read_finished(self.out)
        if finished is not None and finished["global_step"] == self.state.global_step:
            if acc.is_main_process:
                print(
                    f"training already finished at step {self.state.global_step} "
                    f"(export: {finished['export']}); nothing to do. Raise max_train_steps to train longer",
                    file=sys.stderr,
                )
            return
        if acc.is_main_process:
            self.result.export = self.export()
            write_finished(self.out, self.state.global_step, self.result.export)
            print(
                f"finished at step {self.state.global_step}: exported {self.result.export}", file=sys.stderr
            )

    def stop_request(self, terminated: bool) -> str | None:
        """Why this invocation must stop now, the same answer on every process: SIGTERM on any process,
        max_run_minutes spent, or None."""
        limit = self.cfg.max_run_minutes
        flags = [float(terminated), float(bool(limit) and time.monotonic() - self.started > limit * 60)]
        if self.accelerator.num_processes > 1:
            reduced = self.accelerator.reduce(torch.tensor(flags, device=self.device), reduction="max")
            flags = reduced.tolist()
        return "SIGTERM" if flags[0] else "max_run_minutes" if flags[1] else None

    def run(self) -> TrainResult:
        """Train until max_train_steps or this invocation's budget, checkpointing, validating and logging.

        A SIGTERM ends the invocation at the next step boundary with a checkpoint, like a spent budget.
        """
        try:
            with TermSignal() as term:
                return self._run(term)
        finally:
            self.lock.release()

    def _run(self, term: TermSignal) -> TrainResult:
        """The body of run(); `term` tells whether SIGTERM arrived."""
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        self.resume()
        start_step = self.state.global_step
        stop_at = self.max_steps
        if cfg.max_steps_per_run:
            stop_at = min(stop_at, start_step + cfg.max_steps_per_run)
        if acc.is_main_process and cfg.report_to and start_step < self.max_steps:
            acc.init_trackers(
                "uniid", config={k: v for k, v in cfg.to_dict().items() if not isinstance(v, list)}
            )
        bar = tqdm(
            total=self.max_steps,
            initial=self.state.global_step,
            desc=f"uniid-{cfg.stage}",
            disable=not (acc.is_main_process and cfg.progress_bar),
            dynamic_ncols=True,
        )
        loss_sum = torch.zeros((), device=self.device)
        loss_count = 0
        window_start, window_images = time.perf_counter(), 0
        saved_at = start_step
        stop = None
        self.model.train()
        self.sampler.set_epoch(self.state.epoch, self.state.batch_in_epoch)
        # One endless iterator over the epochs: leaving the loop shuts its workers down.
        for batch in self.loader if self.state.global_step < stop_at else ():
            with acc.accumulate(self.model):
                loss = self.compute_loss(batch, self.generators())
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm and not self.deepspeed:
                    acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.state.micro_step += 1
            self.state.batch_in_epoch += 1
            if self.state.batch_in_epoch == self.sampler.batches_per_epoch():
                self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            loss_sum += loss.detach()
            loss_count += 1
            window_images += len(batch["class_word"]) * acc.num_processes
            if not acc.sync_gradients:
                continue
            self.state.global_step += 1
            step = self.state.global_step
            if self.ema is not None:
                self.ema.step(self.params)
            bar.update(1)
            stop = self.stop_request(term.received)
            if step % cfg.logging_steps == 0 or step == stop_at or stop:
                mean_loss = acc.gather(loss_sum / loss_count).mean().item()
                rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                lr = self.scheduler.get_last_lr()[0]
                acc.log({"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": rate}, step=step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.2f}", lr=f"{lr:.2e}")
                self.result.losses.append((step, mean_loss))
                loss_sum.zero_()
                loss_count = 0
                window_start, window_images = time.perf_counter(), 0
            if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
                self.checkpoint()
                saved_at = step
            if self.validator is not None and step % cfg.validation_steps == 0:
                self.validator.run(step)
            if cfg.validation_steps > 0:
                acc.wait_for_everyone()
            if step >= stop_at or stop:
                break
        bar.close()
        if saved_at != self.state.global_step:
            self.checkpoint()
        elif self.result.checkpoint is None:
            self.result.checkpoint = resolve_resume(self.out / "checkpoints", "latest")
        if self.state.global_step >= self.max_steps:
            self.finish()
        elif acc.is_main_process:
            reason = stop or "max_steps_per_run"
            print(
                f"stopped at step {self.state.global_step} of {self.max_steps} ({reason}) with a checkpoint: "
                "run the same command with --resume latest to continue",
                file=sys.stderr,
            )
        acc.wait_for_everyone()
        acc.end_training()
        self.result.global_step = self.state.global_step
        return self.result


class TermSignal:
    """While active, SIGTERM (a cluster pre-empting or cancelling the job) is recorded instead of killing
    the process, so the loop stops at the next step boundary with a checkpoint."""

    def __init__(self) -> None:
        """Nothing received yet."""
        self.received = False
        self.previous: Any = None

    def __enter__(self) -> TermSignal:
        """Install the handler (only the main thread may; elsewhere SIGTERM keeps its behaviour)."""
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._record)
        return self

    def _record(self, signum: int, frame: Any) -> None:
        self.received = True

    def __exit__(self, *exc: object) -> None:
        """Put the previous handler back."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader worker start: ignore SIGTERM, so a signal sent to the whole job (every process) lets the
    main process finish its step and checkpoint; the workers end with it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def configure_deepspeed(accelerator: Any, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed config from the training config (the loader is not prepared, so it cannot).

    Per-process batch, accumulation and clipping come from the training config (0 = no clipping, the
    official default); an accelerate config that sets a different accumulation is refused.
    """
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    accumulation = config.get("gradient_accumulation_steps", "auto")
    if accumulation not in ("auto", cfg.gradient_accumulation_steps):
        raise UniIDError(
            f"the DeepSpeed config sets gradient_accumulation_steps {accumulation}, the training config "
            f"{cfg.gradient_accumulation_steps}: set it only in the training config (remove it from the "
            "accelerate/DeepSpeed config)"
        )
    config["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    config["train_micro_batch_size_per_gpu"] = cfg.train_batch_size
    config["gradient_clipping"] = float(cfg.max_grad_norm or 0.0)


def train(cfg: TrainConfig, face_net: torch.nn.Module | None = None) -> TrainResult:
    """Run one training job in this process (accelerate launch starts one per device)."""
    return Trainer(cfg, face_net).run()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argument_parser("accelerate launch -m training.train", __doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML or JSON file of TrainConfig fields")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields (repeatable: --set a=1 --set b=2, or --set a=1 b=2)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> TrainResult:
    """Entry point for `accelerate launch -m training.train`."""
    args = parse_args(argv)
    require_paths(path_problem("--config", args.config, "file", what="a YAML or JSON config file"))
    overrides = list(args.set) + ([f"resume_from_checkpoint={args.resume}"] if args.resume else [])
    return train(load_config(args.config, overrides))


if __name__ == "__main__":
    sys.exit(run_cli(main))
