"""ComfyUI fixtures: a real ComfyUI in-process (COMFYUI_PATH) with our pack loaded by its own loader.

Also a small SDXL-layout UNet (all 70 attn2 layers), a mini one (one transformer per attention block,
11 attn2 layers, for the many sampling runs), a 3-layer SDXL CLIP and small random UniID weights.
"""

from __future__ import annotations

import asyncio
import os
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui-uniid"  # the folder a Comfy Registry install creates (pyproject name)

SDXL_SMALL_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "dtype": torch.float32,
    "in_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 32,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
APPLY_ARGS = dict(
    merge_step=1,
    text_scale_before=0.5,
    text_scale_after=1.8,
    adapter_scale_before=0.8,
    adapter_scale_after=1.2,
    rescale="normalized",
    start_percent=0.0,
    end_percent=1.0,
)
"""UniID Apply's widget values in the tests: the official scales, merging after the first step."""
SDXL_MINI_UNET = {
    **SDXL_SMALL_UNET,
    "transformer_depth": [0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
}


def _comfy_path() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path or not (Path(path) / "comfy").is_dir():
        pytest.skip("needs a ComfyUI checkout: set COMFYUI_PATH")
    return Path(path)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> types.SimpleNamespace:
    """ComfyUI imported in-process on CPU, with our pack loaded by ComfyUI's own custom-node loader."""
    root = _comfy_path()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if "nodes" in sys.modules and not hasattr(sys.modules["nodes"], "load_custom_node"):
        del sys.modules["nodes"]
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import folder_paths
    import utils.extra_config  # noqa: F401  (ComfyUI's own utils package before `nodes`)

    import nodes

    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("models", "input", "output", "temp", "custom_nodes"):
        (base / sub).mkdir()
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    for name in ("uniid", "insightface", "diffusion_models", "checkpoints"):
        (base / "models" / name).mkdir()
    link = base / "custom_nodes" / PACK_NAME
    link.symlink_to(REPO, target_is_directory=True)
    loaded = asyncio.run(nodes.load_custom_node(str(link)))
    assert loaded, "ComfyUI's loader refused the UniID pack (see the log above)"
    for name in ("uniid", "insightface", "diffusion_models"):
        folder_paths.add_model_folder_path(name, str(base / "models" / name), is_default=True)
    pack = sys.modules[str(link).replace(".", "_x_")]
    return types.SimpleNamespace(
        root=root,
        base=base,
        nodes=nodes,
        folder_paths=folder_paths,
        mm=comfy.model_management,
        model_patcher=comfy.model_patcher,
        sd=comfy.sd,
        supported_models=comfy.supported_models,
        pack=pack,
    )


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Deterministic well-scaled values for every parameter (ComfyUI builds layers uninitialised)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=gen)
            elif name.endswith("weight"):
                param.normal_(1.0, 0.1, generator=gen)
            else:
                param.normal_(0.0, 0.02, generator=gen)


def build_sdxl(comfy, unet: dict, dtype: torch.dtype = torch.float32, seed: int = 1):
    """ModelPatcher (CPU) of an SDXL-family UNet with the given layout and deterministic random weights."""
    config = comfy.supported_models.SDXL({**unet, "dtype": dtype})
    config.unet_config["num_head_channels"] = unet["num_head_channels"]
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    init_weights(model.diffusion_model, seed)
    model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=torch.device("cpu"), offload_device=torch.device("cpu")
    )


@pytest.fixture(scope="session")
def small_sdxl(comfy):
    """ModelPatcher of an SDXL-layout UNet (all 70 attn2 layers) with model_channels 32 (widths 64/128)."""
    return build_sdxl(comfy, SDXL_SMALL_UNET)


@pytest.fixture(scope="session")
def mini_sdxl(comfy):
    """ModelPatcher of the mini SDXL-layout UNet: every attention block with one transformer (11 attn2)."""
    return build_sdxl(comfy, SDXL_MINI_UNET)


@pytest.fixture(scope="session")
def small_clip(comfy):
    """ComfyUI SDXL CLIP (real widths 768 + 1280, real tokenizers) with 3 layers per tower, float32."""
    import comfy.sdxl_clip

    target = types.SimpleNamespace(
        clip=comfy.sdxl_clip.SDXLClipModel, tokenizer=comfy.sdxl_clip.SDXLTokenizer, params={}
    )
    options = {
        "dtype": torch.float32,
        "clip_l_model_config": {"num_hidden_layers": 3},
        "clip_g_model_config": {"num_hidden_layers": 3},
    }
    clip = comfy.sd.CLIP(target, model_options=options)
    init_weights(clip.cond_stage_model, 2)
    return clip


def combo_choices(node_cls, name: str) -> list:
    """The choices a (V3) node's dropdown input offers now, as ComfyUI lists them."""
    inputs = node_cls.INPUT_TYPES()
    spec = {**inputs.get("required", {}), **inputs.get("optional", {})}[name]
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def small_uniid_model(layer_widths: list[int], seed: int = 3):
    """A random UniID model (text branch N=3, adapter M=4, depth 1) whose ip layers fit ``layer_widths``."""
    from uniid_core.models.uniid import UniIDConfig, UniIDModel

    config = UniIDConfig(
        num_text_tokens=3,
        num_adapter_tokens=4,
        adapter_hidden_dim=64,
        layer_widths={2 * i + 1: w for i, w in enumerate(layer_widths)},
        text_depth=1,
        adapter_depth=1,
    )
    torch.manual_seed(seed)
    model = UniIDModel(config)
    init_weights(model, seed)
    model.refresh_fingerprint()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def uniid_weights(pack, small_sdxl):
    """UniIDWeights (the UNIID socket value) sized for the small UNet."""
    widths = [layer.width for layer in pack.base_model.cross_attn_layers(small_sdxl)]
    return pack.sockets.UniIDWeights(model=small_uniid_model(widths), source="test", dtype_choice="auto")


@pytest.fixture(scope="session")
def mini_uniid(pack, mini_sdxl):
    """UniIDWeights sized for the mini UNet."""
    widths = [layer.width for layer in pack.base_model.cross_attn_layers(mini_sdxl)]
    return pack.sockets.UniIDWeights(
        model=small_uniid_model(widths, seed=6), source="mini", dtype_choice="auto"
    )


def random_identity(weights, seed: int):
    """An identity with random (already anchor-rescaled) text tokens and random adapter tokens."""
    from uniid_core.identity import Identity

    gen = torch.Generator().manual_seed(seed)
    return Identity(
        text_tokens=torch.randn(1, 3, 2048, generator=gen),
        text_tokens_rescaled=torch.randn(1, 3, 2048, generator=gen),
        adapter_tokens=torch.randn(1, 4, 2048, generator=gen),
        class_word="person",
        model_fingerprint=weights.fingerprint,
    )


def random_conditioning(seed: int, batch: int = 1) -> list:
    """A CONDITIONING with one random 77-token SDXL entry (and its pooled output)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [
            torch.randn(batch, 77, 2048, generator=gen),
            {"pooled_output": torch.randn(batch, 1280, generator=gen)},
        ]
    ]


def guiders_equal_to_cfg(cn, positive: list, negative: list, cfg: float = 4.0) -> dict:
    """Guiders that reduce to plain CFG with these conds: name -> (factory of a guider for a model, index of
    the positive in the guider's cond list). DualCFG (regular, nested) gets cond2 = the negative and
    PerpNeg gets empty = the negative at neg_scale 0."""
    custom = cn.custom
    dual = custom.DualCFGGuider().get_guider

    def perpneg(model):
        guider = cn.perpneg.Guider_PerpNeg(model)
        guider.set_conds(positive, negative, negative)
        guider.set_cfg(cfg, 0.0)
        return guider

    return {
        "cfg": (lambda m: custom.CFGGuider().get_guider(m, positive, negative, cfg)[0], 0),
        "dual_regular": (lambda m: dual(m, positive, negative, negative, cfg, 7.0, "regular")[0], 2),
        "dual_nested": (lambda m: dual(m, positive, negative, negative, cfg, 1.0, "nested")[0], 2),
        "perpneg": (perpneg, 0),
    }


@pytest.fixture(scope="module")
def cn(comfy) -> types.SimpleNamespace:
    """ComfyUI's node classes and sampler modules that the sampling graphs are built from."""
    import comfy.samplers as samplers
    import comfy.utils as utils
    import comfy_extras.nodes_custom_sampler as custom
    import comfy_extras.nodes_perpneg as perpneg

    utils.set_progress_bar_enabled(False)
    return types.SimpleNamespace(nodes=comfy.nodes, custom=custom, perpneg=perpneg, samplers=samplers)


@pytest.fixture(scope="module")
def conds() -> tuple[list, list]:
    """A random positive and a random negative conditioning."""
    return random_conditioning(1), random_conditioning(2)


@pytest.fixture(scope="session")
def small_face_net():
    """An IResNet with one block per stage (same interface as IResNet-100), random eval-mode weights."""
    from uniid_core.models.iresnet import FaceRecognitionNet

    net = FaceRecognitionNet(blocks=(1, 1, 1, 1))
    init_weights(net, 4)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_var.fill_(1.0)
                module.running_mean.zero_()
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def pack(comfy) -> types.SimpleNamespace:
    """Our pack's node modules as ComfyUI imported them (pack.patch, pack.apply, ...)."""
    prefix = f"{comfy.pack.__name__}.nodes."
    return types.SimpleNamespace(
        **{name[len(prefix) :]: module for name, module in sys.modules.items() if name.startswith(prefix)}
    )
