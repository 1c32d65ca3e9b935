"""Build small random stand-in weights (tiny SDXL-layout model, UniID, face net) to prove the code path.

Everything is made on the fly from random numbers: no download, no real model. Images made with these
weights are noise; they only show that installation, face handling, identity encoding and sampling work.
Usage: `python scripts/standin_weights.py OUT_DIR`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

TEXT_WIDTHS = (64, 128)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MARKER = "STANDIN_WEIGHTS.txt"


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for raw bytes (GPT-2/CLIP convention)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in keep:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tokenizer_files(folder: Path) -> Path:
    """A character-level CLIP vocabulary (every byte, with and without end-of-word) and no merges."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab[BOS], vocab[EOS] = 512, 513
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def _tiny_sdxl(out: Path, tokenizer_dir: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    common = dict(vocab_size=514, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=TEXT_WIDTHS[0], projection_dim=TEXT_WIDTHS[0],
                                           hidden_act="quick_gelu", **common))
    encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=TEXT_WIDTHS[1],
                                                           projection_dim=TEXT_WIDTHS[1], hidden_act="gelu",
                                                           **common))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        cross_attention_dim=sum(TEXT_WIDTHS), transformer_layers_per_block=1, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTHS[1],
        use_linear_projection=True, norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16, 16),
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=64, scaling_factor=0.13025,
    )
    tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"),
                              bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=77)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                     scheduler=scheduler)
    pipe.save_pretrained(out)


def _uniid(out: Path, base: Path) -> None:
    from diffusers import UNet2DConditionModel

    from uniid_core.checkpoint import save_uniid
    from uniid_core.family import diffusers_layer_widths
    from uniid_core.models.uniid import UniIDConfig, UniIDModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    config = UniIDConfig(num_text_tokens=3, num_adapter_tokens=4, adapter_hidden_dim=64,
                         text_widths=TEXT_WIDTHS, context_dim=sum(TEXT_WIDTHS),
                         layer_widths=diffusers_layer_widths(unet))
    model = UniIDModel(config)
    with torch.no_grad():
        torch.nn.init.normal_(model.adapter_branch.adapter_resampler.proj_out.weight, std=0.05)
    model.refresh_fingerprint()
    save_uniid(model.eval(), out)


def _write_face_net(out: Path) -> None:
    from safetensors.torch import save_file

    from uniid_core.models.iresnet import iresnet100

    net = iresnet100()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_var.fill_(1.0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))


def build(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Create (or reuse) the stand-in files under out_dir; returns their paths by role."""
    out_dir = Path(out_dir)
    paths = {
        "base": out_dir / "sdxl_tiny", "uniid": out_dir / "uniid_standin.safetensors",
        "face_net": out_dir / "face_net_standin.safetensors",
    }
    if (out_dir / MARKER).is_file() and all(p.exists() for p in paths.values()):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    np.random.seed(seed)
    _tiny_sdxl(paths["base"], write_tokenizer_files(out_dir / "tokenizer_src"))
    _uniid(paths["uniid"], paths["base"])
    _write_face_net(paths["face_net"])
    (out_dir / MARKER).write_text("Random stand-in weights (scripts/standin_weights.py), not a real model.\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: build the stand-in weights into the given folder."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__)
        return 2
    for role, path in build(Path(args[0])).items():
        print(f"{role:13s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
