"""Validation images during training: the UniID inference path on reference faces of the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from training.data import faces_uint8_to_input
from uniid_core.diffusers_pipeline import GenerationSettings, UniIDPipeline
from uniid_core.schedule import MergeSchedule

if TYPE_CHECKING:
    from training.train import Trainer


class Validator:
    """Generates one image per (reference face, prompt), saves PNGs and logs them to TensorBoard."""

    def __init__(self, trainer: Trainer) -> None:
        """Assemble a diffusers SDXL pipeline around the trainer's own (frozen) modules."""
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        self.trainer = trainer
        cfg, base = trainer.cfg, trainer.base
        sdxl = StableDiffusionXLPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            text_encoder_2=base.text_encoder_2,
            tokenizer=base.tokenizer,
            tokenizer_2=base.tokenizer_2,
            unet=base.unet,
            scheduler=EulerDiscreteScheduler.from_pretrained(cfg.base, subfolder="scheduler"),
        )
        sdxl.set_progress_bar_config(disable=True)
        self.pipeline = UniIDPipeline(sdxl, trainer.uniid, trainer.face_net)
        dataset = trainer.dataset
        self.references = [
            (i, dataset.face(i), dataset.samples[i].class_word)
            for i in cfg.validation_indices
            if i < len(dataset)
        ]
        rescaler = cfg.validation_rescaler()
        self.settings = [
            GenerationSettings(
                prompt=prompt,
                num_inference_steps=cfg.validation_num_inference_steps,
                guidance_scale=cfg.validation_guidance_scale,
                height=cfg.validation_resolution,
                width=cfg.validation_resolution,
                seed=cfg.seed,
                schedule=MergeSchedule(merge_step=cfg.validation_merge_step),
                rescale=rescaler,
            )
            for prompt in cfg.validation_prompts
        ]

    def run(self, step: int) -> list[Path]:
        """Generate, save in output_dir/validation/step-N, log to the trackers; returns the PNG paths."""
        trainer = self.trainer
        folder = Path(trainer.cfg.output_dir) / "validation" / f"step-{step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        branch = trainer.module.trainable_branch()
        branch.eval()
        images: dict[str, list[np.ndarray]] = {}
        paths = []
        try:
            with torch.no_grad(), trainer.accelerator.autocast():
                for index, face, class_word in self.references:
                    faces = faces_uint8_to_input(face[None]).to(trainer.device)
                    identity = self.pipeline.encode_identity(faces, class_word)
                    for p, settings in enumerate(self.settings):
                        image = self.pipeline(identity, settings)[0]
                        path = folder / f"ref{index}_prompt{p}.png"
                        image.save(path)
                        paths.append(path)
                        images.setdefault(f"validation/prompt{p}", []).append(np.asarray(image))
        finally:
            branch.train()
        self._log(images, step)
        return paths

    def _log(self, images: dict[str, list[np.ndarray]], step: int) -> None:
        """Send the images to TensorBoard when it is the active tracker."""
        for tracker in self.trainer.accelerator.trackers:
            if tracker.name == "tensorboard":
                batch: dict[str, Any] = {k: np.stack(v) for k, v in images.items()}
                tracker.log_images(batch, step=step, dataformats="NHWC")
