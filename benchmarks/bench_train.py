"""Training throughput and memory of the UniID trainer vs a baseline set up like the official script.

Baseline (official-like): every step loads each image, detects + aligns the face, resizes the target and
VAE-encodes it, and encodes the prompt with both text encoders. Trainer: prepared shards (aligned crops +
cached latent mean/std), prompts encoded once per class word. Both train the adapter stage of the same
random-weight model at the same batch and precision; rounds are interleaved and medians reported, as
ratios trainer / baseline. Memory counts everything each side keeps resident (UNet, VAE, both text
encoders, face net, UniID branch, optimizer state, cached prompts) plus the transient peak of the steps.

`python benchmarks/bench_train.py [--preset tiny|sdxl] [--precision fp32|bf16] [--batch N]
[--resolution 512] [--rounds 5] [--photos DIR]` (`tiny` runs anywhere in about a minute; `sdxl` uses real
SDXL shapes and wants a GPU). Runs from a fresh clone: the CLIP tokenizers are built here (a byte-level
BPE vocabulary without merges: prompts cost more tokens, the 77-token encoders cost the same).
"""

from __future__ import annotations

import contextlib
import importlib.util
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

from scripts.standin_weights import BOS, EOS, write_tokenizer_files  # noqa: E402
from training.components import (  # noqa: E402
    BaseModels,
    UniIDTrainingModule,
    build_stage_model,
    encode_prompts,
    time_ids,
)
from training.config import TrainConfig  # noqa: E402
from training.data import faces_uint8_to_input, pixels_to_unit_range, resize_target  # noqa: E402
from training.prepare import collect_inputs  # noqa: E402
from training.prepare import main as prepare_main  # noqa: E402
from training.train import Trainer, sample_generators  # noqa: E402
from uniid_core.cli import argument_parser, run_cli  # noqa: E402
from uniid_core.diffusers_processor import install_uniid_processors  # noqa: E402
from uniid_core.face.align import align_face  # noqa: E402
from uniid_core.face.detect import make_detector  # noqa: E402
from uniid_core.face.image import load_image  # noqa: E402
from uniid_core.family import SDXL  # noqa: E402
from uniid_core.models.iresnet import FaceRecognitionNet, iresnet100  # noqa: E402
from uniid_core.models.uniid import RELEASED_ADAPTER_HIDDEN_DIM, RELEASED_ADAPTER_TOKENS  # noqa: E402

TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
UNET_KEYS = (
    "block_out_channels", "layers_per_block", "attention_head_dim", "down_block_types", "up_block_types",
    "transformer_layers_per_block", "addition_time_embed_dim",
)
VAE_KEYS = ("block_out_channels", "layers_per_block")
"""What a preset sets; build_base adds the rest (the same for both presets). "sdxl" reads SDXL's shapes
from the family spec (uniid_core.family)."""
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
        "text": [{key: tower[key] for key in TEXT_KEYS} for tower in SDXL.text_configs()],
        "unet": {**{key: SDXL.reference_unet[key] for key in UNET_KEYS}, "norm_num_groups": 32},
        "vae": {**{key: SDXL.reference_vae[key] for key in VAE_KEYS}, "norm_num_groups": 32},
        "face_blocks": None,
        "adapter_hidden_dim": RELEASED_ADAPTER_HIDDEN_DIM,
        "num_adapter_tokens": RELEASED_ADAPTER_TOKENS,
    },
}


def write_tiny_tokenizers(folder: Path) -> Path:
    """tokenizer/ and tokenizer_2/ for CLIPTokenizer: the stand-in byte vocabulary (BOS, EOS highest)."""
    for name, pad in (("tokenizer", EOS), ("tokenizer_2", "!")):
        target = write_tokenizer_files(folder / name)
        settings = {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": 77,
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": EOS,
            "pad_token": pad,
        }
        (target / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


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
    from PIL import Image

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "bench_train needs face photos: pip install insightface (its wheel ships the sample photo used "
            "here; it is in requirements-dev.txt) or pass --photos DIR with your own face photos"
        )
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
    """Adapter-stage step with per-step detection, VAE encoding and prompt encoding (official-like).

    bf16 as the official script under accelerate: frozen models in bf16, the branch in fp32, autocast.
    """

    def __init__(
        self,
        base: BaseModels,
        face_net: torch.nn.Module,
        cfg: TrainConfig,
        paths: list[Path],
        device: torch.device,
        workers: int,
    ) -> None:
        """Own copies of the models on `device` in the run's precision."""
        self.base, self.cfg, self.device = base, cfg, device
        self.dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
        for module in (base.unet, base.vae, base.text_encoder, base.text_encoder_2):
            module.to(device, self.dtype)
        self.face_net = face_net.to(device, self.dtype)
        encoders = (base.text_encoder, base.text_encoder_2)
        self.uniid = build_stage_model(cfg, base.unet, encoders).to(device)
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
        generators = sample_generators(0, self.step_index, 0, count)
        self.step_index += 1
        with torch.no_grad():
            pixels = pixels_to_unit_range(batch["pixels"].to(device)).to(self.dtype)
            latents = base.vae.encode(pixels).latent_dist.sample().float() * base.vae.config.scaling_factor
            prompts = ["a photo of a person"] * count
            embeds, pooled = encode_prompts(
                [base.tokenizer, base.tokenizer_2], [base.text_encoder, base.text_encoder_2], prompts, device
            )
            features = self.face_net(faces_uint8_to_input(batch["face"].to(device)).to(self.dtype))
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators]).to(device)
        timesteps = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in generators]).to(device)
        noisy = base.noise_scheduler.add_noise(latents, noise, timesteps)
        ids = time_ids(batch["original_size"].to(device), self.cfg.resolution).to(self.dtype)
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if self.dtype == torch.bfloat16
            else contextlib.nullcontext()
        )
        with autocast:
            pred = self.module(noisy.to(self.dtype), timesteps, embeds, pooled, ids, features)
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
        batch = next(self.batches)
        generators = trainer.generators()
        trainer.state.micro_step += 1
        with trainer.accelerator.accumulate(trainer.model):
            loss = trainer.compute_loss(batch, generators)
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


def frozen_modules(base: BaseModels) -> list[torch.nn.Module]:
    """The SDXL modules both setups keep loaded: UNet, VAE and both text encoders."""
    return [base.unet, base.vae, base.text_encoder, base.text_encoder_2]


def resident_bytes(
    modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor]
) -> int:
    """Bytes of the distinct storages a setup keeps between steps: module weights and buffers, optimizer
    state (after a step has created it) and other kept tensors (cached prompt embeddings)."""
    kept = [t for m in modules for t in (*m.parameters(), *m.buffers())] + list(tensors)
    kept += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}
    return sum(storages.values())


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
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="precision of both setups (official: fp32; compare bf16 with bf16)",
    )
    parser.add_argument("--batch", type=int, default=None, help="per step, both setups; default 8 / 2 (tiny)")
    parser.add_argument("--resolution", type=int, default=None, help="default 512 (sdxl) / 128 (tiny)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per setup")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per round")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of each setup")
    parser.add_argument(
        "--photos", default=None, help="folder of face photos (default: made from insightface's)"
    )
    parser.add_argument(
        "--num-photos", type=int, default=None, help="photos to make (default max(4 x batch, 12))"
    )
    parser.add_argument(
        "--tokenizers",
        default=None,
        help="folder with tokenizer/ and tokenizer_2/ (e.g. an SDXL folder); default: built here",
    )
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (8 if args.preset == "sdxl" else 2)
    resolution = args.resolution or (512 if args.preset == "sdxl" else 128)
    precision = "bf16" if args.precision == "bf16" else "no"
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        tokenizers = Path(args.tokenizers) if args.tokenizers else write_tiny_tokenizers(work / "tokenizers")
        base_dir = work / "base"
        trainer_base = build_base(preset, tokenizers, device, base_dir)
        baseline_base = build_base(preset, tokenizers, device, work / "base_copy")
        if args.photos:
            photo_dir = Path(args.photos)
            photos = [Path(p.path) for p in collect_inputs([str(photo_dir)])]
        else:
            photo_dir = work / "photos"
            photos = make_photos(photo_dir, args.num_photos or max(4 * batch, 12))
        prepare_main(
            [
                "--images", str(photo_dir), "--out", str(work / "ds"), "--detector", "mtcnn", "--latents",
                "--base", str(base_dir), "--resolution", str(resolution), "--device", str(device),
            ]
        )  # fmt: skip

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
        baseline = Baseline(baseline_base, face_net(), cfg, photos, device, args.workers)
        ours.step(), baseline.step()
        rates: dict[str, list[float]] = {"trainer": [], "baseline": []}
        peaks = {"trainer": PeakMemory(device), "baseline": PeakMemory(device)}
        runners = {"trainer": ours, "baseline": baseline}
        for _ in range(args.rounds):
            for name in ("baseline", "trainer"):
                rates[name].append(measure(name, runners[name], args.steps, device, peaks[name]))
        trainer = ours.trainer
        resident = {
            "trainer": resident_bytes(
                [*frozen_modules(trainer_base), trainer.face_net, trainer.uniid],
                trainer.optimizer.optimizer,
                [trainer.prompts.embeds, trainer.prompts.pooled],
            ),
            "baseline": resident_bytes(
                [*frozen_modules(baseline_base), baseline.face_net, baseline.uniid], baseline.optimizer, []
            ),
        }
        peak = {name: resident[name] + peaks[name].peak for name in resident}
        speed = {k: statistics.median(v) for k, v in rates.items()}
        summary = {
            "preset": args.preset,
            "device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
            "batch": batch,
            "resolution": resolution,
            "precision": args.precision,
            "images_per_s": {k: round(v, 3) for k, v in speed.items()},
            "best_round_images_per_s": {k: round(max(v), 3) for k, v in rates.items()},
            "rounds": {k: [round(x, 3) for x in v] for k, v in rates.items()},
            "ratio_images_per_s_trainer_over_baseline": round(speed["trainer"] / speed["baseline"], 2),
            "peak_memory_mib": {k: round(v / 2**20, 1) for k, v in peak.items()},
            "resident_memory_mib": {k: round(v / 2**20, 1) for k, v in resident.items()},
            "ratio_peak_memory_trainer_over_baseline": round(peak["trainer"] / peak["baseline"], 2),
            "memory_measure": "resident weights + optimizer state + kept tensors, plus the transient peak of "
            "the steps ("
            + (
                "CUDA allocator"
                if device.type == "cuda"
                else "sampled RSS growth of this process; DataLoader worker processes not included"
            )
            + ")",
            "threads": {
                "torch_intra_op": torch.get_num_threads(),
                "process_os_threads": os_threads(),
                "dataloader_workers_each": args.workers,
            },
            "tokenizers": str(args.tokenizers or "built here (byte-level BPE, no merges)"),
            "note": "baseline lacks the official processor's per-layer host syncs (optimistic on GPU)",
        }
        print(json.dumps(summary, indent=1))
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
