"""Core fixtures: golden parity tensors, rule-made official weights, tiny random UniID models."""

from __future__ import annotations

import importlib.util
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

from uniid_core.checkpoint import uniid_from_tensors
from uniid_core.models import FaceFeatures, FaceRecognitionNet, UniIDConfig, UniIDModel


@pytest.fixture(scope="session")
def make_weights(golden_dir: Path) -> ModuleType:
    """The golden set's weight rule (make_weights.py), imported from its folder."""
    spec = importlib.util.spec_from_file_location("uniid_golden_make_weights", golden_dir / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def golden(golden_dir: Path) -> dict[str, torch.Tensor]:
    """Official outputs of golden case 1 (face, branch and anchor tensors are the same in both cases)."""
    return load_file(str(golden_dir / "golden_case1.safetensors"))


@pytest.fixture(scope="session")
def golden_features(golden: dict[str, torch.Tensor]) -> FaceFeatures:
    """The recorded face-net outputs the official branches were fed."""
    hidden = tuple(golden[f"face_hidden_state_{i}"] for i in range(4))
    return FaceFeatures(golden["face_embedding"], hidden)


@pytest.fixture(scope="session")
def build_state_dict(golden_dir: Path, make_weights: ModuleType) -> Callable[[str], dict[str, torch.Tensor]]:
    """Function: spec name (e.g. "text_branch") -> its official state dict rebuilt from the rule."""

    def build(name: str) -> dict[str, torch.Tensor]:
        spec = make_weights.load_spec(str(golden_dir / "specs" / f"{name}.json"))
        return make_weights.make_state_dict(spec["tensors"], int(spec["seed"]))

    return build


@pytest.fixture(scope="session")
def text_state_dict(build_state_dict) -> dict[str, torch.Tensor]:
    """Official text-branch checkpoint (keys ``text_branch.*``), full size."""
    return build_state_dict("text_branch")


@pytest.fixture(scope="session")
def adapter_state_dict(build_state_dict) -> dict[str, torch.Tensor]:
    """Official adapter-branch checkpoint for the golden tiny UNet (keys ``adapter_branch.*``)."""
    return build_state_dict("adapter_branch")


@pytest.fixture(scope="session")
def face_state_dict(build_state_dict) -> dict[str, torch.Tensor]:
    """IResNet-100 state dict with insightface key names."""
    return build_state_dict("face_recog_r100")


@pytest.fixture(scope="session")
def official_layout(
    tmp_path_factory, golden_dir: Path, text_state_dict, adapter_state_dict
) -> Iterator[Path]:
    """Folder with text_branch_ckpt/ (multi-GPU ``module.`` keys) and adapter_ckpt/, as the release ships."""
    root = tmp_path_factory.mktemp("official")
    text = {f"module.{k}": v for k, v in text_state_dict.items()}
    for sub, tensors in (("text_branch_ckpt", text), ("adapter_ckpt", dict(adapter_state_dict))):
        (root / sub).mkdir()
        shutil.copyfile(golden_dir / sub / "config.json", root / sub / "config.json")
        torch.save(tensors, root / sub / "pytorch_model.bin")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 740 MB: do not keep it among pytest's retained temp dirs


@pytest.fixture(scope="session")
def golden_uniid(text_state_dict, adapter_state_dict) -> UniIDModel:
    """UniID model holding the golden weights (shares their memory: never modify or cast it in a test)."""
    return uniid_from_tensors({**text_state_dict, **adapter_state_dict}, "golden rule weights")


@pytest.fixture(scope="session")
def golden_face_net(face_state_dict) -> FaceRecognitionNet:
    """IResNet-100 holding the golden weights (eval, frozen; never modify it in a test)."""
    net = FaceRecognitionNet()
    net.load_state_dict(face_state_dict, strict=True)
    return net.eval().requires_grad_(False)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a random value (incl. zero-initialised ones) so outputs depend on inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() >= 2:
                param.copy_(noise / math.sqrt(math.prod(param.shape[1:])))
            elif name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return module


TINY_CONFIG = UniIDConfig(
    num_text_tokens=2,
    num_adapter_tokens=4,
    adapter_hidden_dim=64,
    text_widths=(64, 128),
    context_dim=192,
    layer_widths={1: 32, 3: 64, 7: 32},
    text_depth=1,
    adapter_depth=2,
)


@pytest.fixture
def tiny_model() -> UniIDModel:
    """Small UniID model (both branches) with random non-degenerate weights."""
    model = randomize(UniIDModel(TINY_CONFIG), seed=1)
    model.refresh_fingerprint()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_face_net() -> FaceRecognitionNet:
    """IResNet with one block per stage and random weights: the real layout at a fraction of the cost."""
    torch.manual_seed(0)
    return FaceRecognitionNet(blocks=(1, 1, 1, 1)).eval().requires_grad_(False)
