"""Validate the example workflows against ComfyUI node definitions, offline or inside a real ComfyUI.

Offline (any Python): `python scripts/workflow_check.py check` checks workflows/*.json against the stored
definition snapshot. With ComfyUI's Python: `dump --comfyui PATH` rewrites that snapshot, and
`live --comfyui PATH` prints the live definitions plus ComfyUI's own verdict on every workflow as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import importlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = REPO_ROOT / "workflows"
SNAPSHOT = REPO_ROOT / "tests" / "packaging" / "data" / "node_schema.json"
PACK_NAME = "comfyui-uniid"
"""The folder a Comfy Registry install creates: the pyproject name."""
FRONTEND_ONLY = {"Note", "MarkdownNote"}
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UNVERSIONED_KEYS = {"tooltip", "description"}
UNVERSIONED_NODE_KEYS = ("description", "output_tooltips", "category", "display_name", "python_module")
CORE_TYPES = frozenset({
    "CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "KSamplerAdvanced", "EmptyLatentImage",
    "VAEDecode", "SaveImage", "PreviewImage", "LoadImage", "ImageBatch", "SolidMask", "MaskComposite",
    "FeatherMask", "MaskToImage", "ConditioningSetMask", "ConditioningCombine", "ConditioningConcat",
    "ImageScale", "SamplerCustomAdvanced", "CFGGuider", "KSamplerSelect", "PreviewAny",
})
PLACEHOLDER_FILES = (
    "models/checkpoints/sd_xl_base_1.0.safetensors",
    "models/uniid/uniid_sdxl.safetensors",
    "models/uniid/glint360k_r100.pth",
    "models/uniid/identities/my_person.safetensors",
    "models/insightface/models/buffalo_l/det_10g.onnx",
    "models/insightface/models/antelopev2/scrfd_10g_bnkps.onnx",
    "input/face.png",
    "input/face_2.png",
    "input/face_3.png",
    "input/person_a.png",
    "input/person_b.png",
    "input/person_c.png",
    "input/person_c_2.png",
    "input/face_to_avoid.png",
)

Schema = dict[str, dict[str, Any]]


def load_workflows(folder: Path = WORKFLOW_DIR) -> dict[str, dict]:
    """Every workflows/*.json by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def load_snapshot(path: Path = SNAPSHOT) -> dict:
    """The stored node-definition snapshot ({"comfyui_version", "nodes"})."""
    return json.loads(path.read_text())


def input_specs(node_def: dict) -> list[tuple[str, str, dict, list | None, bool]]:
    """(name, type, options dict, combo choices or None, required) for every input, in widget order."""
    out = []
    for group in ("required", "optional"):
        inputs = node_def.get("input", {}).get(group, {})
        order = node_def.get("input_order", {}).get(group, list(inputs))
        for name in order:
            spec = inputs[name]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            kind = spec[0]
            if isinstance(kind, list):
                out.append((name, "COMBO", opts, kind, group == "required"))
            elif kind == "COMBO":
                out.append((name, "COMBO", opts, list(opts.get("options", [])), group == "required"))
            else:
                out.append((name, kind, opts, None, group == "required"))
    return out


def is_widget(kind: str, opts: dict) -> bool:
    """Whether the frontend shows this input as a widget (and stores its value in widgets_values)."""
    return kind in WIDGET_TYPES and not opts.get("forceInput", False)


def extra_widgets(name: str, kind: str, opts: dict) -> int:
    """Values the frontend stores after this widget's own: seed control and upload button."""
    extra = 0
    if opts.get("control_after_generate") or (kind == "INT" and name in SEED_NAMES):
        extra += 1
    if opts.get("image_upload"):
        extra += 1
    return extra


def types_compatible(output_type: str, input_type: str) -> bool:
    """Link rule of the frontend: equal types, a wildcard, or membership in a comma-separated list."""
    if "*" in (output_type, input_type):
        return True
    outs = {t.strip() for t in output_type.split(",")}
    ins = {t.strip() for t in input_type.split(",")}
    return bool(outs & ins)


def widget_error(name: str, kind: str, opts: dict, choices: list | None, value: Any) -> str | None:
    """Why value is not valid for this widget input, or None."""
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name}: {value!r} is not an integer"
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: {value!r} is not a number"
    elif kind == "STRING":
        return None if isinstance(value, str) else f"{name}: {value!r} is not a string"
    elif kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: {value!r} is not a boolean"
    elif kind == "COMBO":
        return None if value in (choices or []) else f"{name}: {value!r} is not one of {choices}"
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{name}: {value} is below the minimum {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{name}: {value} is above the maximum {opts['max']}"
    return None


def _node_label(node: dict) -> str:
    return f"node {node.get('id')} ({node.get('type')})"


def _check_widgets(node: dict, node_def: dict, errors: list[str]) -> None:
    values = list(node.get("widgets_values") or [])
    wanted = [(s, extra_widgets(s[0], s[1], s[2])) for s in input_specs(node_def) if is_widget(s[1], s[2])]
    expected = sum(1 + extra for _, extra in wanted)
    if len(values) != expected:
        names = [s[0] for s, _ in wanted]
        errors.append(f"{_node_label(node)}: {len(values)} widget values for {expected} slots ({names})")
        return
    position = 0
    for (name, kind, opts, choices, _), extra in wanted:
        problem = widget_error(name, kind, opts, choices, values[position])
        if problem:
            errors.append(f"{_node_label(node)}: {problem}")
        for offset in range(1, extra + 1):
            value = values[position + offset]
            if opts.get("image_upload") and offset == extra:
                continue
            if value not in CONTROL_VALUES:
                errors.append(f"{_node_label(node)}: {name} control {value!r} is not one of {CONTROL_VALUES}")
        position += 1 + extra


def validate_ui(workflow: dict, schema: Schema) -> list[str]:
    """Everything wrong with a UI-format workflow: unknown nodes, bad links, invalid widget values."""
    errors = []
    if workflow.get("version") != 0.4:
        errors.append(f"version is {workflow.get('version')!r}, expected 0.4")
    nodes = {}
    for node in workflow.get("nodes", []):
        if node.get("id") in nodes:
            errors.append(f"duplicate node id {node.get('id')}")
        nodes[node.get("id")] = node
        for key in ("pos", "size"):
            if not (isinstance(node.get(key), list) and len(node[key]) == 2):
                errors.append(f"{_node_label(node)}: {key} must be [x, y]")
    links = {}
    for link in workflow.get("links", []):
        if len(link) != 6:
            errors.append(f"link {link!r} must be [id, from_node, from_slot, to_node, to_slot, type]")
            continue
        links[link[0]] = link
    if nodes and max(nodes) > workflow.get("last_node_id", 0):
        errors.append("last_node_id is smaller than the largest node id")
    if links and max(links) > workflow.get("last_link_id", 0):
        errors.append("last_link_id is smaller than the largest link id")
    for node in nodes.values():
        kind = node.get("type")
        if kind in FRONTEND_ONLY:
            text = (node.get("widgets_values") or [None])[0]
            if not isinstance(text, str):
                errors.append(f"{_node_label(node)}: a note needs its text as widgets_values[0]")
            continue
        if kind not in schema:
            errors.append(f"{_node_label(node)}: unknown node type")
            continue
        _check_node_sockets(node, schema[kind], links, errors)
        _check_widgets(node, schema[kind], errors)
    for link_id, (_, src, src_slot, dst, dst_slot, link_type) in links.items():
        if src not in nodes or dst not in nodes:
            errors.append(f"link {link_id}: connects a missing node")
            continue
        src_node, dst_node = nodes[src], nodes[dst]
        outputs = src_node.get("outputs", [])
        if src_slot >= len(outputs) or link_id not in (outputs[src_slot].get("links") or []):
            errors.append(f"link {link_id}: not listed on output {src_slot} of {_node_label(src_node)}")
            continue
        inputs = dst_node.get("inputs", [])
        if dst_slot >= len(inputs) or inputs[dst_slot].get("link") != link_id:
            errors.append(f"link {link_id}: not listed on input {dst_slot} of {_node_label(dst_node)}")
            continue
        out_type, in_type = outputs[src_slot].get("type"), inputs[dst_slot].get("type")
        if not (types_compatible(out_type, in_type) and types_compatible(link_type, in_type)):
            errors.append(f"link {link_id}: {out_type} -> {in_type} is not a valid connection")
    return errors


def _check_node_sockets(node: dict, node_def: dict, links: dict, errors: list[str]) -> None:
    specs = {s[0]: s for s in input_specs(node_def)}
    connected = set()
    for slot, entry in enumerate(node.get("inputs", [])):
        spec = specs.get(entry.get("name"))
        if spec is None:
            errors.append(f"{_node_label(node)}: input {entry.get('name')!r} does not exist")
            continue
        if not types_compatible(spec[1], entry.get("type", "")):
            errors.append(f"{_node_label(node)}: input {entry['name']} is {entry.get('type')}, not {spec[1]}")
        link_id = entry.get("link")
        if link_id is not None:
            link = links.get(link_id)
            if link is None or link[3] != node["id"] or link[4] != slot:
                errors.append(f"{_node_label(node)}: input {entry['name']} points at a wrong link {link_id}")
            connected.add(entry["name"])
    for name, kind, opts, _, required in specs.values():
        if required and not is_widget(kind, opts) and name not in connected:
            errors.append(f"{_node_label(node)}: required input {name} ({kind}) is not connected")
    declared = list(node_def.get("output", []))
    outputs = node.get("outputs", [])
    if len(outputs) != len(declared):
        errors.append(f"{_node_label(node)}: {len(outputs)} outputs, the node has {len(declared)}")
    for slot, (entry, kind) in enumerate(zip(outputs, declared, strict=False)):
        if entry.get("type") != kind:
            errors.append(f"{_node_label(node)}: output {slot} has type {entry.get('type')}, not {kind}")


def ui_to_api(workflow: dict, schema: Schema) -> dict[str, dict]:
    """Convert a UI-format workflow into the API prompt the frontend would queue."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        linked = {e["name"]: e["link"] for e in node.get("inputs", []) if e.get("link") is not None}
        values = iter(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        for name, kind, opts, _, _ in input_specs(schema[node["type"]]):
            if is_widget(kind, opts):
                inputs[name] = next(values)
                for _ in range(extra_widgets(name, kind, opts)):
                    next(values)
            if name in linked:
                link = links[linked[name]]
                if nodes[link[1]].get("mode", 0) in (2, 4):
                    inputs.pop(name, None)
                    continue
                inputs[name] = [str(link[1]), link[2]]
        title = node.get("title") or schema[node["type"]].get("display_name", node["type"])
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


def validate_api(prompt: dict[str, dict], schema: Schema) -> list[str]:
    """Everything wrong with an API prompt: unknown nodes, missing inputs, bad links and values."""
    errors = []
    if not any(schema.get(n["class_type"], {}).get("output_node") for n in prompt.values()):
        errors.append("the prompt has no output node")
    for node_id, node in prompt.items():
        label = f"node {node_id} ({node.get('class_type')})"
        node_def = schema.get(node.get("class_type"))
        if node_def is None:
            errors.append(f"{label}: unknown node type")
            continue
        specs = {s[0]: s for s in input_specs(node_def)}
        for name in node["inputs"]:
            if name not in specs:
                errors.append(f"{label}: unknown input {name}")
        for name, (_, kind, opts, choices, required) in specs.items():
            value = node["inputs"].get(name)
            if value is None:
                if required:
                    errors.append(f"{label}: required input {name} missing")
                continue
            if isinstance(value, list):
                src = prompt.get(value[0])
                if src is None or src["class_type"] not in schema:
                    errors.append(f"{label}: {name} links to a missing node {value[0]}")
                    continue
                outputs = schema[src["class_type"]]["output"]
                if value[1] >= len(outputs) or not types_compatible(outputs[value[1]], kind):
                    errors.append(f"{label}: {name} ({kind}) cannot take output {value[1]} of {value[0]}")
            elif not is_widget(kind, opts):
                errors.append(f"{label}: {name} ({kind}) needs a link, got {value!r}")
            else:
                problem = widget_error(name, kind, opts, choices, value)
                if problem:
                    errors.append(f"{label}: {problem}")
    return errors


def normalise(node_def: dict) -> dict:
    """A node definition without the parts that change with wording (tooltips, descriptions)."""
    clean = copy.deepcopy(node_def)
    for group in clean.get("input", {}).values():
        for spec in group.values():
            if len(spec) > 1 and isinstance(spec[1], dict):
                for key in UNVERSIONED_KEYS:
                    spec[1].pop(key, None)
    for key in UNVERSIONED_NODE_KEYS:
        clean.pop(key, None)
    return clean


def workflow_node_types(workflows: dict[str, dict]) -> set[str]:
    """Node types the workflows use (notes excluded)."""
    return {n["type"] for w in workflows.values() for n in w["nodes"] if n["type"] not in FRONTEND_ONLY}


def block_modules(names: set[str]) -> None:
    """Make top-level modules look uninstalled: import fails and importlib.util.find_spec returns None."""
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield


def write_placeholders(base: Path) -> None:
    """Create the model and input files the example workflows name (stand-in bytes, plain-colour photos).

    Not empty: the dropdowns leave out 0-byte files (interrupted downloads)."""
    from PIL import Image

    for rel in PLACEHOLDER_FILES:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".png":
            shade = 90 + 20 * PLACEHOLDER_FILES.index(rel) % 120
            Image.new("RGB", (256, 256), (shade, shade - 20, shade - 40)).save(path)
        else:
            path.write_bytes(b"placeholder for a workflow check")


def live_report(comfyui: Path, pack: Path, workflows: dict[str, dict], block: set[str]) -> dict:
    """Inside ComfyUI's Python: load ComfyUI + our pack, read definitions, validate each workflow."""
    base = Path(tempfile.mkdtemp(prefix="uniid-comfy-base-"))
    try:
        return _live_report(comfyui, pack, workflows, block, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _live_report(comfyui: Path, pack: Path, workflows: dict[str, dict], block: set[str], base: Path) -> dict:
    for sub in ("models", "input", "output", "temp", "user", "custom_nodes"):
        (base / sub).mkdir()
    os.symlink(pack, base / "custom_nodes" / PACK_NAME)
    block_modules(block)
    sys.path.insert(0, str(comfyui))
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(base)
    with _quiet():
        importlib.import_module("utils.extra_config")
        import execution
        import folder_paths
        from comfy_api.internal import _ComfyNodeInternal
        from comfy_config import config_parser

        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        loaded = asyncio.run(nodes.load_custom_node(str(base / "custom_nodes" / PACK_NAME)))
    ours = sorted(k for k, v in nodes.NODE_CLASS_MAPPINGS.items()
                  if getattr(v, "RELATIVE_PYTHON_MODULE", "").startswith("custom_nodes."))
    known = set(nodes.NODE_CLASS_MAPPINGS)
    wanted = sorted((set(ours) | CORE_TYPES | workflow_node_types(workflows)) & known)

    def info(name: str) -> dict:
        cls = nodes.NODE_CLASS_MAPPINGS[name]
        if issubclass(cls, _ComfyNodeInternal):
            data = cls.GET_NODE_INFO_V1()
        else:
            data = {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                    "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
                    "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}
            data["input_order"] = {k: list(v) for k, v in data["input"].items()}
        data["display_name"] = nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)
        return json.loads(json.dumps(data, default=str))

    empty = {name: info(name) for name in wanted}
    write_placeholders(base)
    full = {name: info(name) for name in wanted}
    for name in wanted:
        full[name]["file_inputs"] = sorted(
            spec_name for group, inputs in full[name].get("input", {}).items()
            for spec_name, spec in inputs.items()
            if json.dumps(spec, sort_keys=True) != json.dumps(empty[name]["input"][group].get(spec_name),
                                                             sort_keys=True)
        )
    verdicts = {}
    for file_name, workflow in workflows.items():
        try:
            prompt = ui_to_api(workflow, full)
        except (KeyError, StopIteration) as exc:
            verdicts[file_name] = {"ok": False, "error": f"conversion failed: {exc!r}"}
            continue
        ok, error, _, node_errors = asyncio.run(execution.validate_prompt("check", prompt, None))
        verdicts[file_name] = {"ok": bool(ok), "error": error, "node_errors": node_errors}
    config = config_parser.extract_node_configuration(str(pack))
    names = ("checkpoints", "uniid", "insightface")
    folders = {name: [os.path.relpath(p, base) for p in folder_paths.get_folder_paths(name)]
               for name in names if name in folder_paths.folder_names_and_paths}
    return {
        "folders": folders,
        "comfyui_version": _comfyui_version(comfyui),
        "pack_loaded": bool(loaded),
        "our_nodes": ours,
        "nodes": full,
        "validate_prompt": verdicts,
        "pyproject": None if config is None else config.model_dump(mode="json"),
    }


def _comfyui_version(comfyui: Path) -> str:
    text = (comfyui / "comfyui_version.py").read_text()
    return text.split("__version__ = ")[-1].strip().strip('"')


def check_all(workflows: dict[str, dict], schema: Schema) -> dict[str, list[str]]:
    """UI and API errors per workflow file."""
    report = {}
    for name, workflow in workflows.items():
        errors = validate_ui(workflow, schema)
        if not errors:
            errors = [f"api: {e}" for e in validate_api(ui_to_api(workflow, schema), schema)]
        report[name] = errors
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: check | dump | live."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate workflows against the stored snapshot")
    check.add_argument("--schema", type=Path, default=SNAPSHOT)
    for name, out in (("dump", SNAPSHOT), ("live", None)):
        cmd = sub.add_parser(name)
        cmd.add_argument("--comfyui", type=Path, required=True)
        cmd.add_argument("--block", nargs="*", default=["insightface", "onnxruntime"],
                         help="modules to make unimportable")
        cmd.add_argument("--out", type=Path, default=out, required=out is None)
    args = parser.parse_args(argv)
    workflows = load_workflows()
    if args.command == "check":
        report = check_all(workflows, load_snapshot(args.schema)["nodes"])
        for name, errors in report.items():
            print(f"{name}: {'OK' if not errors else ''}")
            for error in errors:
                print(f"  {error}")
        return 0 if not any(report.values()) else 1
    report = live_report(args.comfyui.resolve(), REPO_ROOT, workflows, set(args.block))
    if args.command == "live":
        args.out.write_text(json.dumps(report))
        return 0
    snapshot = {"comfyui_version": report["comfyui_version"], "our_nodes": report["our_nodes"],
                "nodes": report["nodes"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({len(snapshot['nodes'])} node types)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
