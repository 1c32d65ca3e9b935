"""Parity with the official UniID code on a golden folder (rule-made weights + recorded official outputs).

``python -m uniid_core.parity GOLDEN_DIR`` rebuilds the weights with the folder's own ``make_weights.py``,
writes them in the official on-disk layout, loads them through this project's loaders, recomputes every
stage from that stage's recorded inputs (plus a free-running end-to-end run from the face image and the
prompt) and prints one line per stage. Exit status 1 when any stage is outside its tolerance.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from .anchor import TextAnchor, anchor_hidden, column_means, load_names, transformers_tower
from .diffusers_processor import install_uniid_processors, set_adapter_scale
from .errors import UniIDError
from .schedule import MergeSchedule
from .splice import splice_text_tokens

STAGE_TOL = (5e-5, 1e-5)
END_TO_END_TOL = (5e-4, 1e-5)
EXACT = (0.0, 0.0)
PAD_IDS = (49407, 0)
ANCHOR_LABELS = {
    "celeb_col_mean": "anchor name-token column means",
    "celeb_anchor": "anchor penultimate states",
    "celeb_anchor_norm": "anchor norms",
}


@dataclass
class StageResult:
    """Outcome of one compared stage."""

    case: str
    name: str
    max_abs: float
    atol: float
    rtol: float
    passed: bool
    exact: bool = False

    def line(self) -> str:
        """One printable line: case, stage, max abs diff, tolerance, PASS/FAIL."""
        tol = "exact" if self.exact else f"atol {self.atol:.0e} rtol {self.rtol:.0e}"
        verdict = "PASS" if self.passed else "FAIL"
        return f"{self.case:<8} {self.name:<44} max|diff| {self.max_abs:10.3e}   {tol:<22} {verdict}"


def compare(case: str, name: str, got: Tensor, ref: Tensor, tol: tuple[float, float]) -> StageResult:
    """Elementwise |got - ref| <= atol + rtol * |ref| (assert_close semantics); exact when tol is (0, 0)."""
    exact = tol == EXACT
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


def _features(g: dict[str, Tensor]) -> Any:
    from .models.iresnet import FaceFeatures

    return FaceFeatures(g["face_embedding"], tuple(g[f"face_hidden_state_{i}"] for i in range(4)))


def compute_anchor_parts(models: LoadedModels, names: list[str], num_tokens: int) -> dict[str, Tensor]:
    """Column means, anchor hidden states and norms for both towers, keyed like the golden tensors."""
    towers = (
        transformers_tower(models.text_encoder, models.tokenizer, PAD_IDS[0]),
        transformers_tower(models.text_encoder_2, models.tokenizer_2, PAD_IDS[1]),
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


def _run_case(
    models: LoadedModels, anchor_parts: dict[str, Tensor], anchor: TextAnchor, path: Path, face_path: Path
) -> list[StageResult]:
    case = _case_params(path)
    name = case["name"]
    g = load_file(str(path))
    results: list[StageResult] = []

    def check(stage: str, got: Tensor, ref_key: str, tol: tuple[float, float] = STAGE_TOL) -> None:
        results.append(compare(name, stage, got, g[ref_key], tol))

    uniid = models.uniid
    width_l = uniid.config.text_widths[0]
    schedule = _schedule(case)
    guidance = float(case["prompt_guidance_scale"])
    rescale = "normalized" if case["normalize_adapter_output"] else "add"
    steps = int(case["num_inference_steps"])

    rgb, face_input = _face_tensor(face_path)
    check("face image uint8 RGB", rgb, "face_input_uint8_rgb_hwc", EXACT)
    check("face preprocessing", face_input, "face_input_normalized")
    features = models.face(g["face_input_normalized"])
    check("face net embedding", features.embedding, "face_embedding")
    for i, hidden in enumerate(features.hidden_states):
        check(f"face net hidden state {i}", hidden, f"face_hidden_state_{i}")

    recorded = _features(g)
    raw, adapter_cond = models.branches(recorded)
    check("text branch raw (tower 1)", raw[..., :width_l], "text_branch_raw_1")
    check("text branch raw (tower 2)", raw[..., width_l:], "text_branch_raw_2")
    check("adapter tokens cond", adapter_cond, "adapter_tokens_cond")
    check("adapter tokens uncond (zero features)", uniid.negative_adapter_tokens(), "adapter_tokens_uncond")

    for key, value in anchor_parts.items():
        kind, tower = key.rsplit("_", 1)
        check(f"{ANCHOR_LABELS[kind]} (tower {tower})", value, key)
    recorded_raw = torch.cat([g["text_branch_raw_1"], g["text_branch_raw_2"]], dim=-1)
    check("text tokens rescaled to anchor", anchor.rescale(recorded_raw), "text_branch_rescaled")

    ids = {
        "prompt_input_ids_1": _ids(models.tokenizer, case["prompt"]),
        "prompt_input_ids_2": _ids(models.tokenizer_2, case["prompt"]),
        "negative_prompt_input_ids_1": _ids(models.tokenizer, case["negative_prompt"]),
        "negative_prompt_input_ids_2": _ids(models.tokenizer_2, case["negative_prompt"]),
    }
    for key, value in ids.items():
        check(key.replace("_", " "), value, key, EXACT)
    embeds, pooled = _encode(models, g["prompt_input_ids_1"], g["prompt_input_ids_2"])
    neg_embeds, neg_pooled = _encode(
        models, g["negative_prompt_input_ids_1"], g["negative_prompt_input_ids_2"]
    )
    check("encode prompt embeds", embeds, "encode_prompt_prompt_embeds")
    check("encode prompt pooled", pooled, "encode_prompt_pooled_prompt_embeds")
    check("encode negative embeds", neg_embeds, "encode_prompt_negative_prompt_embeds")
    check("encode negative pooled", neg_pooled, "encode_prompt_negative_pooled_prompt_embeds")

    batch = g["initial_latents"].shape[0]
    tokens = g["text_branch_rescaled"]

    def prompt_context(e: Tensor, t: Tensor, adapter: Tensor, scale: float) -> Tensor:
        return torch.cat(
            [splice_text_tokens(e.expand(batch, -1, -1), t, scale), adapter.expand(batch, -1, -1)], 1
        )

    def negative_context(e: Tensor, adapter: Tensor) -> Tensor:
        return torch.cat([e.expand(batch, -1, -1), adapter.expand(batch, -1, -1)], dim=1)

    cond_tokens, uncond_tokens = g["adapter_tokens_cond"], g["adapter_tokens_uncond"]
    rec_embeds, rec_neg = g["encode_prompt_prompt_embeds"], g["encode_prompt_negative_prompt_embeds"]
    check(
        "spliced prompt embeds", prompt_context(rec_embeds, tokens, cond_tokens, 1.0), "pipe_in_prompt_embeds"
    )
    check(
        "negative prompt embeds", negative_context(rec_neg, uncond_tokens), "pipe_in_negative_prompt_embeds"
    )
    check(
        "pooled prompt embeds",
        g["encode_prompt_pooled_prompt_embeds"].expand(batch, -1),
        "pipe_in_pooled_prompt_embeds",
    )
    height, width = int(case["height"]), int(case["width"])
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(2 * batch, 1)
    check("added time ids", time_ids, "add_time_ids", EXACT)
    text_embeds = torch.cat([g["pipe_in_negative_pooled_prompt_embeds"], g["pipe_in_pooled_prompt_embeds"]])
    check("added text embeds", text_embeds, "add_text_embeds", EXACT)

    scheduler = _scheduler(models)
    scheduler.set_timesteps(steps)
    check("scheduler timesteps", scheduler.timesteps.float(), "timesteps", EXACT)
    check("scheduler sigmas", scheduler.sigmas.float(), "sigmas", EXACT)
    sigmas = scheduler.sigmas.tolist()
    for label, pick, ref in (
        ("adapter", schedule.adapter_scale, "step_adapter_scale"),
        ("text", schedule.text_scale, "step_text_branch_scale"),
    ):
        by_step = [pick(schedule.before_merge_at_step(i)) for i in range(steps)]
        check(f"{label} scale per step (step index)", torch.tensor(by_step), ref, EXACT)
        by_sigma = [pick(schedule.before_merge_at_sigma(sigma, sigmas)) for sigma in sigmas[:steps]]
        check(f"{label} scale per step (sigma)", torch.tensor(by_sigma), ref, EXACT)
    generator = torch.Generator("cpu").manual_seed(int(case["seed"]))
    latents = torch.randn(tuple(g["initial_latents"].shape), generator=generator) * scheduler.init_noise_sigma
    check("initial latents", latents, "initial_latents")

    install_uniid_processors(models.unet, uniid, rescale=rescale, scale=1.0)
    negative_full = negative_context(rec_neg, uncond_tokens)
    uncond_key, cond_key = "step_noise_pred_uncond", "step_noise_pred_cond"
    latents_before = g["initial_latents"]
    for i, t in enumerate(scheduler.timesteps):
        context = torch.cat(
            [negative_full, prompt_context(rec_embeds, tokens, cond_tokens, schedule.text_scale_at_step(i))]
        )
        results.append(
            compare(
                name, f"step {i} UNet context", context, g["step_unet_encoder_hidden_states"][i], STAGE_TOL
            )
        )
        sample = scheduler.scale_model_input(torch.cat([latents_before] * 2), t)
        results.append(
            compare(name, f"step {i} UNet input sample", sample, g["step_unet_sample"][i], STAGE_TOL)
        )
        set_adapter_scale(models.unet, float(g["step_adapter_scale"][i]))
        noise = _unet(
            models,
            g["step_unet_sample"][i],
            g["step_unet_timestep"][i],
            g["step_unet_encoder_hidden_states"][i],
            g["add_text_embeds"],
            g["add_time_ids"],
        )
        results.append(
            compare(name, f"step {i} noise pred uncond", noise[:batch], g[uncond_key][i], STAGE_TOL)
        )
        results.append(compare(name, f"step {i} noise pred cond", noise[batch:], g[cond_key][i], STAGE_TOL))
        guided = _guided(g[uncond_key][i], g[cond_key][i], guidance)
        results.append(
            compare(name, f"step {i} guided noise", guided, g["step_noise_pred_guided"][i], STAGE_TOL)
        )
        stepped = scheduler.step(g["step_noise_pred_guided"][i], t, latents_before, return_dict=False)[0]
        results.append(
            compare(name, f"step {i} scheduler step", stepped, g["step_latents_after"][i], STAGE_TOL)
        )
        latents_before = g["step_latents_after"][i]

    results.extend(_end_to_end(models, anchor, case, g, face_path, schedule, rescale, latents))
    return results


def _end_to_end(
    models: LoadedModels,
    anchor: TextAnchor,
    case: dict[str, Any],
    g: dict[str, Tensor],
    face_path: Path,
    schedule: MergeSchedule,
    rescale: str,
    latents: Tensor,
) -> list[StageResult]:
    """Free run from the face image and the prompt through our own stages to the final latents."""
    name = case["name"]
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

    history = run(uniid_step, latents)
    results = [
        compare(name, f"end-to-end latents after step {i}", h, g["step_latents_after"][i], END_TO_END_TOL)
        for i, h in enumerate(history)
    ]
    results.append(compare(name, "end-to-end final latents", history[-1], g["final_latents"], END_TO_END_TOL))

    models.unet.set_attn_processor(dict(models.plain_processors))
    plain_context = torch.cat([neg_embeds.expand(batch, -1, -1), embeds.expand(batch, -1, -1)])

    def plain_step(i: int, sample: Tensor, t: Tensor) -> Tensor:
        return _unet(models, sample, t, plain_context, text_embeds, time_ids)

    plain = run(plain_step, latents)
    results.append(
        compare(
            name,
            "plain SDXL final latents (no UniID)",
            plain[-1],
            g["plain_sdxl_final_latents"],
            END_TO_END_TOL,
        )
    )
    return results


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
    parser = argparse.ArgumentParser(
        prog="python -m uniid_core.parity",
        description=(
            "Check this implementation against the official UniID outputs in GOLDEN_DIR. Tolerances follow "
            "the golden README's recommendation for float32: stages fed with their recorded inputs "
            f"atol {STAGE_TOL[0]:g} / rtol {STAGE_TOL[1]:g}; free-running end to end "
            f"atol {END_TO_END_TOL[0]:g} / rtol {END_TO_END_TOL[1]:g}; token ids, timesteps, sigmas and "
            "step scales exact."
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
    print(
        f"{len(results) - len(failed)}/{len(results)} stages passed"
        + (f", {len(failed)} FAILED" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
