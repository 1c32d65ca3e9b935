"""Fixtures for trainer tests: a tiny random SDXL-shaped diffusers model, a tiny face net, real photos."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TEXT_WIDTHS = (64, 128)
CONTEXT_DIM = sum(TEXT_WIDTHS)
RESOLUTION = 64


def insightface_images() -> Path:
    """The sample photos shipped inside the insightface wheel."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the insightface wheel (its sample photos are the test images)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "images"
    if not (path / "t1.jpg").is_file():
        pytest.skip(f"needs the insightface wheel's sample images: {path}/t1.jpg not found")
    return path


def build_tiny_base(root: Path, golden_dir: Path) -> Path:
    """Write a random-weight SDXL-layout diffusers folder (2 text towers, 4 cross-attention layers).

    Tokenizer and scheduler files come from the shared golden tiny SDXL (real CLIP vocabulary).
    """
    golden_tiny = golden_dir / "sdxl_tiny"
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if not (golden_tiny / "tokenizer" / "vocab.json").is_file():
        pytest.skip(f"needs the CLIP tokenizer files of {golden_tiny} (shared golden data)")
    torch.manual_seed(0)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(golden_tiny / name, root / name)
    EulerDiscreteScheduler.from_pretrained(golden_tiny, subfolder="scheduler").save_pretrained(
        root / "scheduler"
    )
    shutil.copy(golden_tiny / "model_index.json", root / "model_index.json")
    common = dict(
        vocab_size=49408,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    CLIPTextModel(
        CLIPTextConfig(
            hidden_size=TEXT_WIDTHS[0], projection_dim=TEXT_WIDTHS[0], hidden_act="quick_gelu", **common
        )
    ).save_pretrained(root / "text_encoder")
    CLIPTextModelWithProjection(
        CLIPTextConfig(hidden_size=TEXT_WIDTHS[1], projection_dim=TEXT_WIDTHS[1], hidden_act="gelu", **common)
    ).save_pretrained(root / "text_encoder_2")
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=CONTEXT_DIM,
        transformer_layers_per_block=1,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTHS[1],
        use_linear_projection=True,
        norm_num_groups=16,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
    ).save_pretrained(root / "vae")
    return root


def tiny_face_net() -> torch.nn.Module:
    """A one-block-per-stage IResNet (same feature shapes as IResNet-100, ~30x cheaper), random, frozen."""
    from uniid_core.models.iresnet import FaceRecognitionNet

    torch.manual_seed(1)
    net = FaceRecognitionNet((1, 1, 1, 1)).eval().requires_grad_(False)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_var.fill_(1.0)
    return net


@pytest.fixture(scope="session")
def r100_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight IResNet-100 saved as safetensors (the structure load_face_net requires)."""
    from safetensors.torch import save_file

    from uniid_core.models.iresnet import iresnet100

    torch.manual_seed(2)
    net = iresnet100()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_var.fill_(1.0)
    path = tmp_path_factory.mktemp("facenet") / "r100.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, golden_dir: Path) -> Path:
    """Path of the tiny SDXL diffusers folder."""
    return build_tiny_base(tmp_path_factory.mktemp("sdxl") / "tiny", golden_dir)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos (insightface samples, crops of t1.jpg), one without a face, one unreadable file."""
    src = insightface_images()
    out = tmp_path_factory.mktemp("photos")
    for name in ("t1.jpg", "mask_white.jpg", "mask_black.jpg", "mask_blue.jpg"):
        shutil.copy(src / name, out / name)
    group = Image.open(src / "t1.jpg").convert("RGB")
    width, height = group.size
    for i in range(4):
        left = i * width // 4
        group.crop((left, 0, min(width, left + width // 3), height)).save(out / f"t1_crop{i}.jpg")
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))
    Image.fromarray(np.stack([gradient] * 3, axis=-1)).save(out / "no_face.png")
    (out / "broken.jpg").write_bytes(b"this is not a jpeg")
    return out


def prepare_command(photo_dir: Path, out: Path, base: Path) -> list[str]:
    """The training.prepare arguments the tests use: MTCNN, small shards, cached latents, CPU."""
    return [
        "--images",
        str(photo_dir),
        "--out",
        str(out),
        "--detector",
        "mtcnn",
        "--shard-size",
        "4",
        "--latents",
        "--base",
        str(base),
        "--resolution",
        str(RESOLUTION),
        "--device",
        "cpu",
    ]


@pytest.fixture(scope="session")
def standin_insightface_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An insightface root with tiny stand-in buffalo_l models (SCRFD fires on red; genderage says 'man')."""
    from tests.face.conftest import fake_insightface_root

    return fake_insightface_root(tmp_path_factory)


def write_noise_images(folder: Path, count: int, size: int = 96) -> list[Path]:
    """`count` small random RGB PNGs (distinct, for the pre-aligned detector), sorted by name."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(5)
    paths = []
    for i in range(count):
        pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
        paths.append(folder / f"img{i:03d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def samples_by_image(dataset_dir: Path) -> dict[str, tuple[str, bytes]]:
    """image path -> (class word, aligned crop bytes) of every sample of a prepared dataset."""
    from training.data import FaceDataset

    dataset = FaceDataset(dataset_dir, use_cached_latents=False)
    found = {}
    for i, sample in enumerate(dataset.samples):
        assert sample.image not in found, f"{sample.image} was stored twice"
        found[sample.image] = (sample.class_word, dataset.face(i).numpy().tobytes())
    return found


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path, tiny_base: Path) -> tuple[Path, dict]:
    """A dataset prepared once with MTCNN and cached latents: (folder, report)."""
    from training.prepare import main as prepare_main

    out = tmp_path_factory.mktemp("dataset") / "ds"
    report = prepare_main(prepare_command(photo_dir, out, tiny_base))
    return out, report


def train_config(tmp: Path, base: Path, dataset: Path, stage: str, **overrides: object) -> dict:
    """A TrainConfig dict for the tiny model: few tokens, batch 2, 64 px, no tensorboard."""
    config = dict(
        stage=stage,
        base=str(base),
        dataset=str(dataset),
        face_net="injected",
        output_dir=str(tmp / f"run_{stage}"),
        num_text_tokens=2,
        num_adapter_tokens=4,
        adapter_hidden_dim=64,
        resolution=RESOLUTION,
        train_batch_size=2,
        max_train_steps=3,
        checkpointing_steps=0,
        logging_steps=1,
        dataloader_num_workers=0,
        report_to=None,
        progress_bar=False,
    )
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    """Save a config dict as JSON for the command-line entry points."""
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker of the two-process DDP test."""
    config.addinivalue_line("markers", "multiprocess: starts two training processes (CPU, gloo)")
