"""Parity with the official UniID code on a golden folder (rule-made weights + recorded official outputs).

``python -m uniid_core.parity GOLDEN_DIR`` rebuilds the weights with the folder's own ``make_weights.py``,
writes them in the official on-disk layout, loads them through this project's loaders, recomputes every
stage from that stage's recorded inputs (plus a free-running end-to-end run from the face image and the
prompt) and prints one line per stage. Exit status 1 when any stage is outside its tolerance.

Golden files written with several images per prompt (prompt-stage tensors repeated once per image) are
compared repeat by repeat; sigmas may differ from the official environment's by one float32 ulp; a stage
whose tensors a golden file lacks is reported as skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from .anchor import TextAnchor, anchor_hidden, column_means, load_names, transformers_tower
from .cli import argument_parser, run_cli
from .diffusers_processor import install_uniid_processors, set_adapter_scale
from .errors import UniIDError
from .family import SDXL
from .schedule import MergeSchedule
from .splice import splice_text_tokens

STAGE_TOL = (5e-5, 1e-5)
END_TO_END_TOL = (5e-4, 1e-5)
EXACT = (0.0, 0.0)
SIGMA_ULPS = 1
PER_PROMPT_KEYS = (
    "face_input_normalized",
    "face_embedding",
    *(f"face_hidden_state_{i}" for i in range(4)),
    "text_branch_raw_1",
    "text_branch_raw_2",
    "adapter_tokens_cond",
    "adapter_tokens_uncond",
    "text_branch_rescaled",
    "prompt_input_ids_1",
    "prompt_input_ids_2",
    "negative_prompt_input_ids_1",
    "negative_prompt_input_ids_2",
    "encode_prompt_prompt_embeds",
    "encode_prompt_negative_prompt_embeds",
    "encode_prompt_pooled_prompt_embeds",
    "encode_prompt_negative_pooled_prompt_embeds",
    "pipe_in_prompt_embeds",
    "pipe_in_negative_prompt_embeds",
    "pipe_in_pooled_prompt_embeds",
    "pipe_in_negative_pooled_prompt_embeds",
)
"""Prompt-stage tensors: the official pipeline repeats them once per image when it makes several."""
ANCHOR_LABELS = {
    "celeb_col_mean": "anchor name-token column means",
    "celeb_anchor": "anchor penultimate states",
    "celeb_anchor_norm": "anchor norms",
}


@dataclass
class StageResult:
    """Outcome of one compared stage (``skipped`` when the golden file lacks its tensors)."""

    case: str
    name: str
    max_abs: float
    atol: float
    rtol: float
    passed: bool
    exact: bool = False
    ulps: int = 0
    skipped: str = ""

    def line(self) -> str:
        """One printable line: case, stage, max abs diff, tolerance, PASS/FAIL/SKIP."""
        if self.skipped:
            return f"{self.case:<8} {self.name:<44} SKIP (the golden file lacks {self.skipped})"
        if self.exact:
            tol = "exact"
        elif self.ulps:
            tol = f"within {self.ulps} float32 ulp"
        else:
            tol = f"atol {self.atol:.0e} rtol {self.rtol:.0e}"
        verdict = "PASS" if self.passed else "FAIL"
        return f"{self.case:<8} {self.name:<44} max|diff| {self.max_abs:10.3e}   {tol:<22} {verdict}"


def _repeat_to(got: Tensor, ref: Tensor, name: str) -> tuple[Tensor, str]:
    """A one-row result broadcast over the golden tensor's per-image repeats (compares every repeat)."""
    if got.dim() and ref.dim() and got.shape[0] == 1 < ref.shape[0] and got.shape[1:] == ref.shape[1:]:
        return got.expand_as(ref), f"{name} (x{ref.shape[0]} images)"
    return got, name


def compare(
    case: str, name: str, got: Tensor, ref: Tensor, tol: tuple[float, float], repeats: bool = False
) -> StageResult:
    """Elementwise |got - ref| <= atol + rtol * |ref| (assert_close semantics); exact when tol is (0, 0).

    With ``repeats`` a one-row ``got`` is checked against every per-image repeat of ``ref``.
    """
    exact = tol == EXACT
    if repeats:
        got, name = _repeat_to(got, ref, name)
    if tuple(got.shape) != tuple(ref.shape):
        return StageResult(
            case,
            f"{name} (shape {tuple(got.shape)} vs {tuple(ref.shape)})",
            float("inf"),
            tol[0],
            tol[1],
            False,
            exact,
        )
    got64, ref64 = got.detach().double().cpu(), ref.detach().double().cpu()
    diff = (got64 - ref64).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    finite = bool(torch.isfinite(got64).all())
    passed = finite and bool((diff <= tol[0] + tol[1] * ref64.abs()).all())
    return StageResult(case, name, max_abs if finite else float("nan"), tol[0], tol[1], passed, exact)


def compare_ulps(case: str, name: str, got: Tensor, ref: Tensor, ulps: int = SIGMA_ULPS) -> StageResult:
    """|got - ref| within ``ulps`` float32 units in the last place of ref (sigmas of another diffusers)."""
    if tuple(got.shape) != tuple(ref.shape):
        return StageResult(
            case,
            f"{name} (shape {tuple(got.shape)} vs {tuple(ref.shape)})",
            float("inf"),
            0,
            0,
            False,
            ulps=ulps,
        )
    ref32 = ref.detach().float().cpu()
    up = torch.nextafter(ref32, torch.full_like(ref32, float("inf"))) - ref32
    down = ref32 - torch.nextafter(ref32, torch.full_like(ref32, float("-inf")))
    spacing = torch.maximum(up, down).double()
    diff = (got.detach().double().cpu() - ref32.double()).abs()
    passed = bool(torch.isfinite(diff).all()) and bool((diff <= ulps * spacing).all())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    return StageResult(case, name, max_abs, 0.0, 0.0, passed, ulps=ulps)


class MissingGolden(KeyError):
    """A tensor the golden file does not hold."""


class GoldenCase:
    """One golden file: references as recorded, and inputs with per-image repeats reduced to one row."""

    def __init__(self, path: Path) -> None:
        self.tensors = load_file(str(path))
        self.repeats: dict[str, int] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def ref(self, key: str) -> Tensor:
        """The tensor as recorded."""
        if key not in self.tensors:
            raise MissingGolden(key)
        return self.tensors[key]

    def input(self, key: str) -> Tensor:
        """The tensor as an input: a prompt-stage tensor repeated per image gives its first row."""
        value = self.ref(key)
        if key in PER_PROMPT_KEYS and value.dim() and value.shape[0] > 1:
            return value[:1]
        return value


def _batch(golden: GoldenCase) -> int:
    """Images sampled per prompt: the batch of the recorded initial latents (or of the final ones)."""
    for key in ("initial_latents", "final_latents", "step_latents_after"):
        if key in golden:
            value = golden.ref(key)
            return int(value.shape[1] if key == "step_latents_after" else value.shape[0])
    return 1


def _import_make_weights(golden_dir: Path) -> ModuleType:
    path = golden_dir / "make_weights.py"
    if not path.is_file():
        raise UniIDError(f"{golden_dir} is not a golden parity folder: make_weights.py is missing")
    spec = importlib.util.spec_from_file_location("uniid_golden_make_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_layout(golden_dir: Path, work_dir: Path) -> Path:
    """Rebuild the rule-made weights into the official on-disk layout under ``work_dir``."""
    make_weights = _import_make_weights(golden_dir)
    layout = work_dir / "layout"
    make_weights.write_layout(str(layout), str(golden_dir))
    return layout


@dataclass
class LoadedModels:
    """Everything the stages need, loaded from the official layout through the project's loaders."""

    face_net: Any
    uniid: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    unet: Any
    plain_processors: dict
    scheduler_dir: Path
    layout: Path
    memo: dict = field(default_factory=dict)

    def cached(self, label: str, fn: Callable[..., Any], *inputs: Tensor) -> Any:
        """``fn(*inputs)``, computed once per distinct input bytes (cases often share their face inputs)."""
        digest = hashlib.sha256()
        for tensor in inputs:
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        key = (label, digest.hexdigest())
        if key not in self.memo:
            self.memo[key] = fn(*inputs)
        return self.memo[key]

    def face(self, pixels: Tensor) -> Any:
        """Face-net features of ``pixels`` (memoised)."""
        return self.cached("face", self.face_net, pixels)

    def branches(self, features: Any) -> tuple[Tensor, Tensor]:
        """Raw text tokens and adapter tokens of ``features`` (memoised)."""
        inputs = (features.embedding, *features.hidden_states)
        return self.cached(
            "branches",
            lambda *_: (self.uniid.text_branch(features), self.uniid.adapter_branch(features)),
            *inputs,
        )


def load_models(layout: Path) -> LoadedModels:
    """Load face net, UniID branches, both CLIP towers + tokenizers and the UNet from ``layout``."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from .checkpoint import load_face_net, load_official

    base = layout / "sdxl_tiny"
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").eval()
    return LoadedModels(
        face_net=load_face_net(layout / "face_recog_r100.pth"),
        uniid=load_official(text=layout / "text_branch_ckpt", adapter=layout / "adapter_ckpt").eval(),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder").eval(),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2").eval(),
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2"),
        unet=unet,
        plain_processors=dict(unet.attn_processors),
        scheduler_dir=base / "scheduler",
        layout=layout,
    )


def _scheduler(models: LoadedModels) -> Any:
    import diffusers

    config = json.loads((models.scheduler_dir / "scheduler_config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    return cls.from_pretrained(models.scheduler_dir.parent, subfolder=models.scheduler_dir.name)


def _face_tensor(image_path: Path) -> tuple[Tensor, Tensor]:
    """uint8 RGB HWC image and its (1,3,112,112) network input (official BGR read -> RGB)."""
    import cv2

    from .face.align import faces_to_tensor

    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UniIDError(f"cannot read the face image {image_path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb), faces_to_tensor(rgb[None])


def _ids(tokenizer: Any, text: str) -> Tensor:
    return tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _encode(models: LoadedModels, ids_1: Tensor, ids_2: Tensor) -> tuple[Tensor, Tensor]:
    """SDXL prompt encoding: concat of both towers' penultimate states, pooled = tower-2 text_embeds."""
    out_1 = models.text_encoder(ids_1, output_hidden_states=True)
    out_2 = models.text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1), out_2.text_embeds


def _features(golden: GoldenCase) -> Any:
    from .models.iresnet import FaceFeatures

    hidden = tuple(golden.input(f"face_hidden_state_{i}") for i in range(4))
    return FaceFeatures(golden.input("face_embedding"), hidden)


def compute_anchor_parts(models: LoadedModels, names: list[str], num_tokens: int) -> dict[str, Tensor]:
    """Column means, anchor hidden states and norms for both towers, keyed like the golden tensors."""
    towers = (
        transformers_tower(models.text_encoder, models.tokenizer, SDXL.pad_ids[0]),
        transformers_tower(models.text_encoder_2, models.tokenizer_2, SDXL.pad_ids[1]),
    )
    parts = {}
    for k, tower in enumerate(towers, start=1):
        means = column_means(tower, names, num_tokens)
        hidden = anchor_hidden(tower, means)
        parts[f"celeb_col_mean_{k}"] = means
        parts[f"celeb_anchor_{k}"] = hidden
        parts[f"celeb_anchor_norm_{k}"] = torch.linalg.vector_norm(hidden, dim=1, keepdim=True)
    return parts


def _case_params(path: Path) -> dict[str, Any]:
    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["golden"])["meta"]
    case = dict(meta["case"])
    case["name"] = meta.get("case_name", path.stem)
    case["prompt"] = meta["prompt"]
    case["negative_prompt"] = meta["negative_prompt"]
    return case


def _schedule(case: dict[str, Any]) -> MergeSchedule:
    return MergeSchedule(
        merge_step=int(case["start_merge_step"]),
        text_before=float(case["text_branch_scale_before_merge"]),
        text_after=float(case["text_branch_scale"]),
        adapter_before=float(case["adapter_branch_scale_before_merge"]),
        adapter_after=float(case["adapter_branch_scale"]),
    )


def _unet(
    models: LoadedModels, sample: Tensor, t: Tensor, context: Tensor, text_embeds: Tensor, time_ids: Tensor
) -> Tensor:
    added = {"text_embeds": text_embeds, "time_ids": time_ids}
    return models.unet(sample, t, encoder_hidden_states=context, added_cond_kwargs=added).sample


def _guided(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    return uncond + scale * (cond - uncond)


class CaseChecker:
    """Collects the results of one case; a missing reference or input skips the stage, not the run."""

    def __init__(self, name: str, golden: GoldenCase) -> None:
        self.name = name
        self.golden = golden
        self.results: list[StageResult] = []

    def check(
        self, stage: str, got: Tensor, key: str, tol: tuple[float, float] = STAGE_TOL, repeats: bool = False
    ) -> None:
        """Compare ``got`` with the recorded ``key`` (skipped when the file lacks it)."""
        if key not in self.golden:
            self.skip(stage, key)
            return
        self.results.append(compare(self.name, stage, got, self.golden.ref(key), tol, repeats))

    def check_ulps(self, stage: str, got: Tensor, key: str) -> None:
        """Compare within SIGMA_ULPS float32 ulps (skipped when the file lacks the key)."""
        if key not in self.golden:
            self.skip(stage, key)
            return
        self.results.append(compare_ulps(self.name, stage, got, self.golden.ref(key)))

    def skip(self, stage: str, key: str) -> None:
        """Record a stage the golden file cannot check."""
        self.results.append(StageResult(self.name, stage, float("nan"), 0.0, 0.0, True, skipped=key))

    @contextmanager
    def stages(self, label: str) -> Iterator[None]:
        """Run a group of stages; if an input tensor is missing the rest of the group is skipped."""
        try:
            yield
        except MissingGolden as missing:
            self.skip(f"{label} (rest of the group)", missing.args[0])


def _run_case(
    models: LoadedModels, anchor_parts: dict[str, Tensor], anchor: TextAnchor, path: Path, face_path: Path
) -> list[StageResult]:
    case = _case_params(path)
    g = GoldenCase(path)
    c = CaseChecker(case["name"], g)
    uniid = models.uniid
    width_l = uniid.config.text_widths[0]
    schedule = _schedule(case)
    guidance = float(case["prompt_guidance_scale"])
    rescale = "normalized" if case["normalize_adapter_output"] else "add"
    steps = int(case["num_inference_steps"])
    batch = _batch(g)

    with c.stages("face"):
        rgb, face_input = _face_tensor(face_path)
        c.check("face image uint8 RGB", rgb, "face_input_uint8_rgb_hwc", EXACT)
        c.check("face preprocessing", face_input, "face_input_normalized", repeats=True)
        features = models.face(g.input("face_input_normalized"))
        c.check("face net embedding", features.embedding, "face_embedding", repeats=True)
        for i, hidden in enumerate(features.hidden_states):
            c.check(f"face net hidden state {i}", hidden, f"face_hidden_state_{i}", repeats=True)

    with c.stages("branches"):
        raw, adapter_cond = models.branches(_features(g))
        c.check("text branch raw (tower 1)", raw[..., :width_l], "text_branch_raw_1", repeats=True)
        c.check("text branch raw (tower 2)", raw[..., width_l:], "text_branch_raw_2", repeats=True)
        c.check("adapter tokens cond", adapter_cond, "adapter_tokens_cond", repeats=True)
        uncond = uniid.negative_adapter_tokens()
        c.check("adapter tokens uncond (zero features)", uncond, "adapter_tokens_uncond", repeats=True)

    for key, value in anchor_parts.items():
        kind, tower = key.rsplit("_", 1)
        c.check(f"{ANCHOR_LABELS[kind]} (tower {tower})", value, key)
    with c.stages("text tokens rescaled"):
        recorded_raw = torch.cat([g.input("text_branch_raw_1"), g.input("text_branch_raw_2")], dim=-1)
        c.check(
            "text tokens rescaled to anchor",
            anchor.rescale(recorded_raw),
            "text_branch_rescaled",
            repeats=True,
        )

    ids = {
        "prompt_input_ids_1": _ids(models.tokenizer, case["prompt"]),
        "prompt_input_ids_2": _ids(models.tokenizer_2, case["prompt"]),
        "negative_prompt_input_ids_1": _ids(models.tokenizer, case["negative_prompt"]),
        "negative_prompt_input_ids_2": _ids(models.tokenizer_2, case["negative_prompt"]),
    }
    for key, value in ids.items():
        c.check(key.replace("_", " "), value, key, EXACT, repeats=True)
    with c.stages("prompt encoding"):
        embeds, pooled = _encode(models, g.input("prompt_input_ids_1"), g.input("prompt_input_ids_2"))
        neg_embeds, neg_pooled = _encode(
            models, g.input("negative_prompt_input_ids_1"), g.input("negative_prompt_input_ids_2")
        )
        c.check("encode prompt embeds", embeds, "encode_prompt_prompt_embeds", repeats=True)
        c.check("encode prompt pooled", pooled, "encode_prompt_pooled_prompt_embeds", repeats=True)
        c.check("encode negative embeds", neg_embeds, "encode_prompt_negative_prompt_embeds", repeats=True)
        c.check(
            "encode negative pooled", neg_pooled, "encode_prompt_negative_pooled_prompt_embeds", repeats=True
        )

    def prompt_context(e: Tensor, t: Tensor, adapter: Tensor, scale: float) -> Tensor:
        return torch.cat(
            [splice_text_tokens(e.expand(batch, -1, -1), t, scale), adapter.expand(batch, -1, -1)], 1
        )

    def negative_context(e: Tensor, adapter: Tensor) -> Tensor:
        return torch.cat([e.expand(batch, -1, -1), adapter.expand(batch, -1, -1)], dim=1)

    with c.stages("splice"):
        tokens = g.input("text_branch_rescaled")
        cond_tokens, uncond_tokens = g.input("adapter_tokens_cond"), g.input("adapter_tokens_uncond")
        rec_embeds = g.input("encode_prompt_prompt_embeds")
        spliced = prompt_context(rec_embeds, tokens, cond_tokens, 1.0)
        c.check("spliced prompt embeds", spliced[:1], "pipe_in_prompt_embeds", repeats=True)
        negative = negative_context(g.input("encode_prompt_negative_prompt_embeds"), uncond_tokens)
        c.check("negative prompt embeds", negative[:1], "pipe_in_negative_prompt_embeds", repeats=True)
        c.check(
            "pooled prompt embeds",
            g.input("encode_prompt_pooled_prompt_embeds"),
            "pipe_in_pooled_prompt_embeds",
            repeats=True,
        )
    height, width = int(case["height"]), int(case["width"])
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(2 * batch, 1)
    c.check("added time ids", time_ids, "add_time_ids", EXACT)
    with c.stages("added text embeds"):
        text_embeds = torch.cat(
            [
                g.input("pipe_in_negative_pooled_prompt_embeds").expand(batch, -1),
                g.input("pipe_in_pooled_prompt_embeds").expand(batch, -1),
            ]
        )
        c.check("added text embeds", text_embeds, "add_text_embeds", EXACT)

    scheduler = _scheduler(models)
    scheduler.set_timesteps(steps)
    c.check("scheduler timesteps", scheduler.timesteps.float(), "timesteps", EXACT)
    c.check_ulps("scheduler sigmas", scheduler.sigmas.float(), "sigmas")
    sigmas = scheduler.sigmas.tolist()
    for label, pick, ref in (
        ("adapter", schedule.adapter_scale, "step_adapter_scale"),
        ("text", schedule.text_scale, "step_text_branch_scale"),
    ):
        by_step = [pick(schedule.before_merge_at_step(i)) for i in range(steps)]
        c.check(f"{label} scale per step (step index)", torch.tensor(by_step), ref, EXACT)
        by_sigma = [pick(schedule.before_merge_at_sigma(sigma, sigmas)) for sigma in sigmas[:steps]]
        c.check(f"{label} scale per step (sigma)", torch.tensor(by_sigma), ref, EXACT)
    generator = torch.Generator("cpu").manual_seed(int(case["seed"]))
    shape = (batch, *_latent_shape(models, height, width))
    latents = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    c.check("initial latents", latents, "initial_latents")

    install_uniid_processors(models.unet, uniid, rescale=rescale, scale=1.0)
    with c.stages("UNet steps"):
        tokens = g.input("text_branch_rescaled")
        cond_tokens, uncond_tokens = g.input("adapter_tokens_cond"), g.input("adapter_tokens_uncond")
        rec_embeds = g.input("encode_prompt_prompt_embeds")
        negative_full = negative_context(g.input("encode_prompt_negative_prompt_embeds"), uncond_tokens)
        uncond_key, cond_key = "step_noise_pred_uncond", "step_noise_pred_cond"
        latents_before = g.input("initial_latents")
        for i, t in enumerate(scheduler.timesteps):
            context = torch.cat(
                [
                    negative_full,
                    prompt_context(rec_embeds, tokens, cond_tokens, schedule.text_scale_at_step(i)),
                ]
            )
            c.results.append(
                compare(
                    c.name,
                    f"step {i} UNet context",
                    context,
                    g.ref("step_unet_encoder_hidden_states")[i],
                    STAGE_TOL,
                )
            )
            sample = scheduler.scale_model_input(torch.cat([latents_before] * 2), t)
            c.results.append(
                compare(
                    c.name, f"step {i} UNet input sample", sample, g.ref("step_unet_sample")[i], STAGE_TOL
                )
            )
            set_adapter_scale(models.unet, float(g.ref("step_adapter_scale")[i]))
            noise = _unet(
                models,
                g.ref("step_unet_sample")[i],
                g.ref("step_unet_timestep")[i],
                g.ref("step_unet_encoder_hidden_states")[i],
                g.ref("add_text_embeds"),
                g.ref("add_time_ids"),
            )
            c.results.append(
                compare(c.name, f"step {i} noise pred uncond", noise[:batch], g.ref(uncond_key)[i], STAGE_TOL)
            )
            c.results.append(
                compare(c.name, f"step {i} noise pred cond", noise[batch:], g.ref(cond_key)[i], STAGE_TOL)
            )
            guided = _guided(g.ref(uncond_key)[i], g.ref(cond_key)[i], guidance)
            c.results.append(
                compare(
                    c.name, f"step {i} guided noise", guided, g.ref("step_noise_pred_guided")[i], STAGE_TOL
                )
            )
            stepped = scheduler.step(
                g.ref("step_noise_pred_guided")[i], t, latents_before, return_dict=False
            )[0]
            c.results.append(
                compare(
                    c.name, f"step {i} scheduler step", stepped, g.ref("step_latents_after")[i], STAGE_TOL
                )
            )
            latents_before = g.ref("step_latents_after")[i]

    _end_to_end(models, anchor, case, c, face_path, schedule, rescale, latents)
    return c.results


def _latent_shape(models: LoadedModels, height: int, width: int) -> tuple[int, int, int]:
    """(channels, height, width) of the UNet latents for an image of ``height`` x ``width`` pixels."""
    vae = json.loads((models.layout / "sdxl_tiny" / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return int(models.unet.config.in_channels), height // factor, width // factor


def _end_to_end(
    models: LoadedModels,
    anchor: TextAnchor,
    case: dict[str, Any],
    c: CaseChecker,
    face_path: Path,
    schedule: MergeSchedule,
    rescale: str,
    latents: Tensor,
) -> None:
    """Free run from the face image and the prompt through our own stages to the final latents."""
    uniid = models.uniid
    batch = latents.shape[0]
    guidance = float(case["prompt_guidance_scale"])
    raw, adapter = models.branches(models.face(_face_tensor(face_path)[1]))
    tokens = anchor.rescale(raw)
    negative_adapter = uniid.negative_adapter_tokens()
    embeds, pooled = _encode(
        models, _ids(models.tokenizer, case["prompt"]), _ids(models.tokenizer_2, case["prompt"])
    )
    neg_embeds, neg_pooled = _encode(
        models,
        _ids(models.tokenizer, case["negative_prompt"]),
        _ids(models.tokenizer_2, case["negative_prompt"]),
    )
    height, width = int(case["height"]), int(case["width"])
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(2 * batch, 1)
    text_embeds = torch.cat([neg_pooled.expand(batch, -1), pooled.expand(batch, -1)])
    negative = torch.cat([neg_embeds.expand(batch, -1, -1), negative_adapter.expand(batch, -1, -1)], dim=1)

    def context_at(scale: float) -> Tensor:
        positive = splice_text_tokens(embeds.expand(batch, -1, -1), tokens, scale)
        return torch.cat([negative, torch.cat([positive, adapter.expand(batch, -1, -1)], dim=1)])

    def run(denoise: Callable[[int, Tensor, Tensor], Tensor], start: Tensor) -> list[Tensor]:
        scheduler = _scheduler(models)
        scheduler.set_timesteps(int(case["num_inference_steps"]))
        current, history = start, []
        for i, t in enumerate(scheduler.timesteps):
            noise = denoise(i, scheduler.scale_model_input(torch.cat([current] * 2), t), t)
            current = scheduler.step(
                _guided(noise[:batch], noise[batch:], guidance), t, current, return_dict=False
            )[0]
            history.append(current)
        return history

    def uniid_step(i: int, sample: Tensor, t: Tensor) -> Tensor:
        set_adapter_scale(models.unet, schedule.adapter_scale_at_step(i))
        return _unet(models, sample, t, context_at(schedule.text_scale_at_step(i)), text_embeds, time_ids)

    if "step_latents_after" not in c.golden and "final_latents" not in c.golden:
        c.skip("end-to-end latents", "step_latents_after and final_latents")
    else:
        _check_history(c, run(uniid_step, latents))

    models.unet.set_attn_processor(dict(models.plain_processors))
    plain_context = torch.cat([neg_embeds.expand(batch, -1, -1), embeds.expand(batch, -1, -1)])

    def plain_step(i: int, sample: Tensor, t: Tensor) -> Tensor:
        return _unet(models, sample, t, plain_context, text_embeds, time_ids)

    if "plain_sdxl_final_latents" not in c.golden:
        c.skip("plain SDXL final latents (no UniID)", "plain_sdxl_final_latents")
        return
    plain = run(plain_step, latents)
    c.check("plain SDXL final latents (no UniID)", plain[-1], "plain_sdxl_final_latents", END_TO_END_TOL)


def _check_history(c: CaseChecker, history: list[Tensor]) -> None:
    """Free-run latents after every step and at the end against the recorded ones."""
    with c.stages("end to end"):
        after = c.golden.ref("step_latents_after")
        for i, latents in enumerate(history):
            c.results.append(
                compare(c.name, f"end-to-end latents after step {i}", latents, after[i], END_TO_END_TOL)
            )
    c.check("end-to-end final latents", history[-1], "final_latents", END_TO_END_TOL)


def golden_cases(golden_dir: Path) -> list[Path]:
    """Every golden_case*.safetensors of the folder, sorted."""
    cases = sorted(golden_dir.glob("golden_case*.safetensors"))
    if not cases:
        raise UniIDError(f"{golden_dir} holds no golden_case*.safetensors files")
    return cases


def run_parity(
    golden_dir: str | Path,
    work_dir: str | Path | None = None,
    keep: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[StageResult]:
    """Rebuild, load and compare every stage of every golden case; returns one result per stage."""
    golden_dir = Path(golden_dir).resolve()
    cases = golden_cases(golden_dir)
    say = log or (lambda message: None)
    created = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="uniid-parity-")) if created else Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        layout = write_layout(golden_dir, root)
        say(f"wrote the official layout to {layout} in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        models = load_models(layout)
        say(f"loaded every model through the project's loaders in {time.perf_counter() - started:.1f} s")
        results: list[StageResult] = []
        with torch.no_grad():
            num_tokens = int(models.uniid.config.num_text_tokens)
            names = load_names(layout / "wiki_names_v2.txt")
            parts = compute_anchor_parts(models, names, num_tokens)
            anchor = TextAnchor(
                norms_l=parts["celeb_anchor_norm_1"][:, 0],
                norms_g=parts["celeb_anchor_norm_2"][:, 0],
                widths=tuple(models.uniid.config.text_widths),
            )
            for path in cases:
                results.extend(_run_case(models, parts, anchor, path, layout / "face_112.png"))
        return results
    finally:
        if not keep:
            shutil.rmtree(root / "layout", ignore_errors=True)
            if created:
                shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argument_parser(
        "python -m uniid_core.parity",
        (
            "Check this implementation against the official UniID outputs in GOLDEN_DIR. Tolerances follow "
            "the golden README's recommendation for float32: stages fed with their recorded inputs "
            f"atol {STAGE_TOL[0]:g} / rtol {STAGE_TOL[1]:g}; free-running end to end "
            f"atol {END_TO_END_TOL[0]:g} / rtol {END_TO_END_TOL[1]:g}; sigmas within {SIGMA_ULPS} "
            "float32 ulp; token ids, timesteps and step scales exact. Several images per prompt are "
            "compared repeat by repeat; stages whose tensors a golden file lacks are reported as skipped."
        ),
    )
    parser.add_argument(
        "golden_dir", type=Path, help="folder laid out like shared/golden (make_weights.py, specs/, ...)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where to write the ~1.6 GB official layout (default: a temporary folder)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the written layout after the run")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared machine)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    results = run_parity(args.golden_dir, args.work_dir, args.keep, log=print)
    for result in results:
        print(result.line())
    failed = [r for r in results if not r.passed]
    skipped = [r for r in results if r.skipped]
    checked = len(results) - len(skipped)
    print(
        f"{checked - len(failed)}/{checked} stages passed"
        + (f", {len(failed)} FAILED" if failed else "")
        + (f", {len(skipped)} skipped (tensors missing from the golden files)" if skipped else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
