"""Training throughput of the UniID trainer vs a baseline configured like the official script, same run.

Baseline (official-like): fp32, every step loads each image, detects + aligns the face, resizes the target
and VAE-encodes it, and encodes the prompt with both text encoders. Trainer: prepared shards (aligned
crops + cached latent mean/std), prompts encoded once per class word, bf16 autocast on GPU. Both train the
adapter stage on the same random-weight model; rounds are interleaved and medians reported.

`python benchmarks/bench_train.py [--preset tiny|sdxl] [--batch 8] [--resolution 512] [--rounds 5]`
(`tiny` runs anywhere in about a minute; `sdxl` uses real SDXL shapes and wants a GPU).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.components import (  # noqa: E402
    BaseModels,
    UniIDTrainingModule,
    build_uniid,
    encode_prompts,
    time_ids,
)
from training.config import TrainConfig  # noqa: E402
from training.data import faces_uint8_to_input, pixels_to_unit_range, resize_target  # noqa: E402
from training.prepare import main as prepare_main  # noqa: E402
from training.train import Trainer, step_generator  # noqa: E402
from uniid_core.cli import argument_parser, run_cli  # noqa: E402
from uniid_core.diffusers_processor import install_uniid_processors  # noqa: E402
from uniid_core.face.align import align_face  # noqa: E402
from uniid_core.face.detect import make_detector  # noqa: E402
from uniid_core.face.image import load_image  # noqa: E402
from uniid_core.models.iresnet import FaceRecognitionNet, iresnet100  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": [dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)] * 2,
        "unet": dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=1,
            addition_time_embed_dim=8,
            norm_num_groups=16,
        ),
        "vae": dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8),
        "face_blocks": (1, 1, 1, 1),
        "adapter_hidden_dim": 64,
        "num_adapter_tokens": 4,
    },
    "sdxl": {
        "text": [
            dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
            dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20),
        ],
        "unet": dict(
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            addition_time_embed_dim=256,
            norm_num_groups=32,
        ),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
        "face_blocks": None,
        "adapter_hidden_dim": 768,
        "num_adapter_tokens": 25,
    },
}


def build_base(preset: dict[str, Any], tokenizers: Path, device: torch.device, folder: Path) -> BaseModels:
    """Random-weight SDXL-layout models in memory; the VAE is also saved (training.prepare reads it)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device(device):
        encoders = []
        for k, spec in enumerate(preset["text"]):
            config = CLIPTextConfig(
                vocab_size=49408,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=2,
                pad_token_id=1,
                projection_dim=spec["hidden_size"],
                hidden_act="quick_gelu" if k == 0 else "gelu",
                **spec,
            )
            encoders.append((CLIPTextModel if k == 0 else CLIPTextModelWithProjection)(config))
        widths = [spec["hidden_size"] for spec in preset["text"]]
        unet = UNet2DConditionModel(
            in_channels=4,
            out_channels=4,
            cross_attention_dim=sum(widths),
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=6 * preset["unet"]["addition_time_embed_dim"] + widths[1],
            use_linear_projection=True,
            **preset["unet"],
        )
        vae = AutoencoderKL(
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.13025,
            **preset["vae"],
        )
    vae.save_pretrained(folder / "vae")
    for module in (unet, vae, *encoders):
        module.requires_grad_(False).eval()
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return BaseModels(
        unet,
        vae,
        encoders[0],
        encoders[1],
        CLIPTokenizer.from_pretrained(tokenizers / "tokenizer"),
        CLIPTokenizer.from_pretrained(tokenizers / "tokenizer_2"),
        scheduler,
    )


def make_photos(folder: Path, count: int) -> list[Path]:
    """Real face photos: 1.8x crops around each face MTCNN finds in insightface's t1.jpg, plus mirrors."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("insightface")
    group = load_image(Path(spec.submodule_search_locations[0]) / "data" / "images" / "t1.jpg")
    faces = make_detector("mtcnn").detect(group)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        x1, y1, x2, y2 = faces[i % len(faces)].box
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, 0.9 * max(x2 - x1, y2 - y1)
        box = [int(max(0, cx - half)), int(max(0, cy - half)), int(cx + half), int(cy + half)]
        crop = Image.fromarray(group).crop(box).resize((600, 600))
        if (i // len(faces)) % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        paths.append(folder / f"face{i:03d}.png")
        crop.save(paths[-1])
    return paths


class OfficialLikeData(torch.utils.data.Dataset):
    """Per item: read the photo, detect + align the face, resize the target (as the official dataset does)."""

    def __init__(self, paths: list[Path], resolution: int) -> None:
        """Remember the photos; each worker builds its own detector."""
        self.paths = paths
        self.resolution = resolution
        self.detector = None

    def __len__(self) -> int:
        """Number of photos."""
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One sample, computed from scratch."""
        if self.detector is None:
            self.detector = make_detector("mtcnn")
        image = load_image(self.paths[i])
        face = max(self.detector.detect(image), key=lambda f: f.area)
        return {
            "face": torch.from_numpy(align_face(image, face.landmarks)),
            "pixels": torch.from_numpy(resize_target(image, self.resolution).copy()),
            "original_size": torch.tensor(image.shape[:2]),
        }


class Baseline:
    """fp32 adapter-stage step with per-step detection, VAE encoding and prompt encoding."""

    def __init__(
        self,
        base: BaseModels,
        face_net: torch.nn.Module,
        cfg: TrainConfig,
        paths: list[Path],
        device: torch.device,
        workers: int,
    ) -> None:
        """Own fp32 copies of the models on `device`."""
        self.base, self.cfg, self.device = base, cfg, device
        for module in (base.unet, base.vae, base.text_encoder, base.text_encoder_2):
            module.to(device, torch.float32)
        self.face_net = face_net.to(device, torch.float32)
        widths = (base.text_encoder.config.hidden_size, base.text_encoder_2.config.hidden_size)
        self.uniid = build_uniid(cfg, base.unet, widths, base.unet.config.cross_attention_dim).to(device)
        install_uniid_processors(base.unet, self.uniid, rescale="add")
        self.module = UniIDTrainingModule(self.uniid, base.unet, "adapter")
        self.params = list(self.uniid.adapter_branch.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        loader = torch.utils.data.DataLoader(
            OfficialLikeData(paths, cfg.resolution),
            batch_size=cfg.train_batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        self.loader = loader
        self.batches = iter(loader)
        self.step_index = 0

    def step(self) -> int:
        """One optimizer step; returns the number of images trained on."""
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        base, device = self.base, self.device
        count = batch["face"].shape[0]
        generator = step_generator(0, self.step_index, 0)
        self.step_index += 1
        with torch.no_grad():
            dist = base.vae.encode(pixels_to_unit_range(batch["pixels"].to(device))).latent_dist
            latents = dist.sample() * base.vae.config.scaling_factor
            prompts = ["a photo of a person"] * count
            embeds, pooled = encode_prompts(
                [base.tokenizer, base.tokenizer_2], [base.text_encoder, base.text_encoder_2], prompts, device
            )
            features = self.face_net(faces_uint8_to_input(batch["face"].to(device)))
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, 1000, (count,), generator=generator).to(device)
        noisy = base.noise_scheduler.add_noise(latents, noise, timesteps)
        ids = time_ids(batch["original_size"].to(device), self.cfg.resolution).float()
        pred = self.module(noisy, timesteps, embeds, pooled, ids, features)
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return count


class Ours:
    """The real Trainer's step (prepared shards, cached latents, prompt cache, bf16 autocast on GPU)."""

    def __init__(self, trainer: Trainer) -> None:
        """Wrap a built Trainer."""
        self.trainer = trainer
        self.batches = iter(trainer.loader)

    def step(self) -> int:
        """One optimizer step; returns the number of images trained on."""
        trainer = self.trainer
        try:
            batch = next(self.batches)
        except StopIteration:
            trainer.state.epoch += 1
            trainer.sampler.set_epoch(trainer.state.epoch)
            self.batches = iter(trainer.loader)
            batch = next(self.batches)
        generator = step_generator(0, trainer.state.micro_step, 0)
        trainer.state.micro_step += 1
        with trainer.accelerator.accumulate(trainer.model):
            loss = trainer.compute_loss(batch, generator)
            trainer.accelerator.backward(loss)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        return len(batch["class_word"])


class PeakMemory:
    """Peak transient memory of a block: CUDA allocator peak, or sampled RSS growth on the CPU."""

    def __init__(self, device: torch.device) -> None:
        """Pick the measurement for the device."""
        self.device = device
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        """Start measuring."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self._rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        """Stop measuring."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated() - self.start)
        else:
            self.running = False
            self.thread.join()


def weights_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct parameters and buffers of some modules."""
    seen = {}
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def measure(name: str, runner: Any, steps: int, device: torch.device, memory: PeakMemory) -> float:
    """Images/s over `steps` optimizer steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, images = time.perf_counter(), 0
    with memory:
        for _ in range(steps):
            images += runner.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def os_threads() -> int:
    """Threads of this process right now."""
    return len(os.listdir("/proc/self/task"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build both setups, run interleaved rounds, print a JSON summary."""
    parser = argument_parser("python benchmarks/bench_train.py", __doc__.split("\n")[0])
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="tiny" if not torch.cuda.is_available() else "sdxl",
        help="model sizes: sdxl (real shapes, GPU) or tiny (anywhere)",
    )
    parser.add_argument("--batch", type=int, default=None, help="default 8 (sdxl) / 2 (tiny)")
    parser.add_argument("--resolution", type=int, default=None, help="default 512 (sdxl) / 128 (tiny)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per setup")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per round")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of each setup")
    parser.add_argument(
        "--mixed-precision", default=None, help="trainer precision (default bf16 on GPU, no on CPU)"
    )
    parser.add_argument(
        "--tokenizers",
        default=str(REPO.parent / "shared" / "golden" / "sdxl_tiny"),
        help="folder with tokenizer/ and tokenizer_2/ (CLIP BPE files)",
    )
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (8 if args.preset == "sdxl" else 2)
    resolution = args.resolution or (512 if args.preset == "sdxl" else 128)
    precision = args.mixed_precision or ("bf16" if device.type == "cuda" else "no")
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        base_dir = work / "base"
        trainer_base = build_base(preset, Path(args.tokenizers), device, base_dir)
        baseline_base = build_base(preset, Path(args.tokenizers), device, work / "base_copy")
        photos = make_photos(work / "photos", max(4 * batch, 12))
        prepare_main(
            [
                "--images",
                str(work / "photos"),
                "--out",
                str(work / "ds"),
                "--detector",
                "mtcnn",
                "--latents",
                "--base",
                str(base_dir),
                "--resolution",
                str(resolution),
                "--device",
                str(device),
            ]
        )

        def face_net() -> FaceRecognitionNet:
            torch.manual_seed(1)
            blocks = preset["face_blocks"]
            return (FaceRecognitionNet(blocks) if blocks else iresnet100()).eval().requires_grad_(False)

        cfg = TrainConfig(
            stage="adapter",
            dataset=str(work / "ds"),
            output_dir=str(work / "run"),
            num_adapter_tokens=preset["num_adapter_tokens"],
            adapter_hidden_dim=preset["adapter_hidden_dim"],
            resolution=resolution,
            train_batch_size=batch,
            mixed_precision=precision,
            dataloader_num_workers=args.workers,
            report_to=None,
            progress_bar=False,
            checkpointing_steps=0,
        )
        ours = Ours(Trainer(cfg, face_net=face_net(), base=trainer_base))
        baseline = Baseline(
            baseline_base,
            face_net(),
            TrainConfig(**{**cfg.to_dict(), "mixed_precision": "no"}),
            photos,
            device,
            args.workers,
        )
        ours.step(), baseline.step()
        rates: dict[str, list[float]] = {"trainer": [], "baseline": []}
        peaks = {"trainer": PeakMemory(device), "baseline": PeakMemory(device)}
        runners = {"trainer": ours, "baseline": baseline}
        for _ in range(args.rounds):
            for name in ("baseline", "trainer"):
                rates[name].append(measure(name, runners[name], args.steps, device, peaks[name]))
        trainer_weights = weights_bytes(trainer_base.unet, ours.trainer.face_net, ours.trainer.uniid)
        baseline_weights = weights_bytes(
            baseline_base.unet,
            baseline_base.vae,
            baseline_base.text_encoder,
            baseline_base.text_encoder_2,
            baseline.face_net,
            baseline.uniid,
        )
        summary = {
            "preset": args.preset,
            "device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
            "batch": batch,
            "resolution": resolution,
            "trainer_precision": precision,
            "images_per_s": {k: round(statistics.median(v), 3) for k, v in rates.items()},
            "best_round_images_per_s": {k: round(max(v), 3) for k, v in rates.items()},
            "rounds": {k: [round(x, 3) for x in v] for k, v in rates.items()},
            "ratio_trainer_over_baseline": round(
                statistics.median(rates["trainer"]) / statistics.median(rates["baseline"]), 2
            ),
            "peak_memory_mib": {
                "trainer": round((trainer_weights + peaks["trainer"].peak) / 2**20),
                "baseline": round((baseline_weights + peaks["baseline"].peak) / 2**20),
                "measure": "resident model weights + transient peak of the steps ("
                + ("CUDA allocator" if device.type == "cuda" else "sampled RSS growth")
                + ")",
            },
            "threads": {
                "torch_intra_op": torch.get_num_threads(),
                "process_os_threads": os_threads(),
                "dataloader_workers_each": args.workers,
            },
            "note": "baseline lacks the official processor's per-layer host syncs (optimistic on GPU)",
        }
        print(json.dumps(summary, indent=1))
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
