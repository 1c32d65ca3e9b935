"""Every example workflow is valid against the node definitions, in UI format and as an API prompt."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

RUN_WITH_BUNDLED_DETECTOR = {
    "uniid_basic.json",
    "uniid_multi_reference.json",
    "uniid_advanced_schedule.json",
    "uniid_per_block.json",
    "uniid_save_identity.json",
    "uniid_load_identity.json",
    "uniid_two_people_masks.json",
    "uniid_face_similarity.json",
    "uniid_identity_batch.json",
    "uniid_negative_identity.json",
}
OFFICIAL_SETTINGS = "uniid_official_settings.json"
"""The one workflow whose point is the official settings (insightface buffalo_l); the others run with
what requirements.txt installs."""
EXPECTED = RUN_WITH_BUNDLED_DETECTOR | {OFFICIAL_SETTINGS}
DETECTOR_WIDGET = {"UniIDFaceDetectorLoader": 0, "UniIDLoaderAllInOne": 2}
"""Where each node that chooses the face detector keeps its backend among its widget values."""
INTERFACE_V1 = Path(__file__).parent / "data" / "node_interface_v1.json"
"""Our nodes' definitions as ComfyUI listed them before the move to the V3 schema (ComfyUI 0.3.64, the
dump's placeholder files): ids, inputs with types, options, defaults and tooltips, outputs in order."""
INTERFACE_ADDED = Path(__file__).parent / "data" / "node_interface_added.json"
"""Nodes, appended optional inputs, appended choices and extended tooltips added since, each listed on
purpose (the comparison accepts nothing else)."""
V3_ONLY_NODE_KEYS = (
    "name", "category", "description", "output_is_list", "output_tooltips", "deprecated", "experimental",
    "api_node", "python_module",
)
"""Keys a V3 node adds to its V1 definition; they describe the node (the V1 class had them as class
attributes) but are not part of what a workflow or an API prompt sends."""
V3_EXPLICIT_DEFAULTS = {"multiline": False, "multiselect": False}
"""Options a V3 input writes out with their default value, which the V1 definition left implicit."""


@pytest.fixture(scope="module")
def wc(scripts_on_path: Path):
    import workflow_check

    return workflow_check


@pytest.fixture(scope="module")
def snapshot(wc) -> dict:
    return wc.load_snapshot()


@pytest.fixture(scope="module")
def schema(snapshot: dict) -> dict:
    return snapshot["nodes"]


@pytest.fixture(scope="module")
def workflows(wc) -> dict[str, dict]:
    return wc.load_workflows()


def test_all_example_workflows_present(workflows: dict) -> None:
    assert set(workflows) == EXPECTED


def _notes(workflow: dict) -> str:
    return "\n".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "Note")


@pytest.mark.parametrize("name", sorted(RUN_WITH_BUNDLED_DETECTOR))
def test_workflows_run_with_the_bundled_detector_and_say_how_to_switch(workflows: dict, name: str) -> None:
    workflow = workflows[name]
    detectors = [n for n in workflow["nodes"] if n["type"] in DETECTOR_WIDGET]
    for node in detectors:
        backend = node["widgets_values"][DETECTOR_WIDGET[node["type"]]]
        assert backend == "mtcnn", f"{name} needs insightface; ship it with mtcnn"
    if detectors:
        assert "To switch to insightface" in _notes(workflow) and "backend = insightface" in _notes(workflow)


def test_official_settings_workflow_says_it_needs_insightface(workflows: dict) -> None:
    workflow = workflows[OFFICIAL_SETTINGS]
    (detector,) = [n for n in workflow["nodes"] if n["type"] == "UniIDFaceDetectorLoader"]
    assert detector["widgets_values"][0] == "insightface"
    assert "insightface" in _notes(workflow) and "backend = mtcnn" in _notes(workflow)


def test_save_workflow_runs_in_one_press_and_load_workflow_needs_no_face_models(workflows: dict) -> None:
    save = {n["type"] for n in workflows["uniid_save_identity.json"]["nodes"]}
    assert {"UniIDSaveIdentity", "UniIDEncodeFace", "SaveImage"} <= save and "UniIDLoadIdentity" not in save
    load = {n["type"] for n in workflows["uniid_load_identity.json"]["nodes"]}
    assert "UniIDLoadIdentity" in load and not load & {"UniIDEncodeFace", "UniIDFaceNetLoader", "LoadImage"}


def _links_into(workflow: dict, node_type: str, input_name: str) -> list[str]:
    """Types of the nodes linked into ``input_name`` of every ``node_type`` node."""
    by_id = {n["id"]: n for n in workflow["nodes"]}
    found = []
    for node in (n for n in workflow["nodes"] if n["type"] == node_type):
        for socket in node["inputs"]:
            if socket["name"] == input_name and socket["link"] is not None:
                link = next(link for link in workflow["links"] if link[0] == socket["link"])
                found.append(by_id[link[1]]["type"])
    return found


def test_identity_batch_and_negative_identity_workflows(workflows: dict) -> None:
    batch = workflows["uniid_identity_batch.json"]
    combines = {n["widgets_values"][2] for n in batch["nodes"] if n["type"] == "UniIDEncodeFace"}
    assert combines == {"per_image", "mean_features"}
    assert _links_into(batch, "UniIDApply", "identity") == ["UniIDIdentityBatch"]
    assert _links_into(batch, "EmptyLatentImage", "batch_size") == ["UniIDIdentityBatch"]
    negative = workflows["uniid_negative_identity.json"]
    assert _links_into(negative, "UniIDApply", "negative_identity") == ["UniIDEncodeFace"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_format_is_valid(wc, schema: dict, workflows: dict, name: str) -> None:
    assert wc.validate_ui(workflows[name], schema) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_conversion_is_valid(wc, schema: dict, workflows: dict, name: str) -> None:
    prompt = wc.ui_to_api(workflows[name], schema)
    assert wc.validate_api(prompt, schema) == []
    json.dumps(prompt)
    notes = sum(n["type"] in wc.FRONTEND_ONLY for n in workflows[name]["nodes"])
    assert len(prompt) == len(workflows[name]["nodes"]) - notes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_only_core_and_uniid_nodes_with_notes(wc, snapshot: dict, workflows: dict, name: str) -> None:
    workflow = workflows[name]
    types = {n["type"] for n in workflow["nodes"]}
    ours = set(snapshot["our_nodes"])
    for kind in types - wc.FRONTEND_ONLY:
        module = snapshot["nodes"][kind].get("python_module", "nodes")
        assert kind in ours or not module.startswith("custom_nodes"), f"{kind} comes from another pack"
    assert types & ours, "an example workflow must use the UniID nodes"
    notes = [n for n in workflow["nodes"] if n["type"] == "Note"]
    assert notes and all(len(n["widgets_values"][0]) > 80 for n in notes)
    assert any("Start here" == n.get("title") for n in notes)


def test_workflows_match_the_builder(scripts_on_path: Path, schema: dict, workflows: dict) -> None:
    import build_workflows

    assert build_workflows.build_all(schema) == workflows, "run: python scripts/build_workflows.py"


def test_validator_catches_broken_workflows(wc, schema: dict, workflows: dict) -> None:
    base = workflows["uniid_advanced_schedule.json"]
    by_type = {n["type"]: i for i, n in enumerate(base["nodes"])}

    def broken(mutate) -> list[str]:
        workflow = copy.deepcopy(base)
        mutate(workflow)
        errors = wc.validate_ui(workflow, schema)
        return errors or wc.validate_api(wc.ui_to_api(workflow, schema), schema)

    def combo(w: dict) -> None:
        w["nodes"][by_type["UniIDFaceDetectorLoader"]]["widgets_values"][0] = "dlib"

    def out_of_range(w: dict) -> None:
        w["nodes"][by_type["KSampler"]]["widgets_values"][2] = 0

    def wrong_link(w: dict) -> None:
        apply = w["nodes"][by_type["UniIDApply"]]
        slot = next(i for i, s in enumerate(apply["inputs"]) if s["name"] == "uniid")
        link = next(link for link in w["links"] if link[0] == apply["inputs"][slot]["link"])
        face_net = w["nodes"][by_type["UniIDFaceNetLoader"]]
        link[1], link[5] = face_net["id"], "UNIID_FACE_NET"
        face_net["outputs"][0]["links"].append(link[0])
        apply["inputs"][slot]["type"] = "UNIID_FACE_NET"

    def unknown(w: dict) -> None:
        w["nodes"][by_type["UniIDApply"]]["type"] = "UniIDApplyPlus"

    def missing_value(w: dict) -> None:
        w["nodes"][by_type["UniIDApply"]]["widgets_values"].pop()

    assert any("dlib" in e for e in broken(combo))
    assert any("steps: 0 is below" in e for e in broken(out_of_range))
    assert any("UNIID_FACE_NET" in e for e in broken(wrong_link))
    assert any("unknown node type" in e for e in broken(unknown))
    assert any("widget values" in e for e in broken(missing_value))

    prompt = wc.ui_to_api(base, schema)
    apply_id = str(base["nodes"][by_type["UniIDApply"]]["id"])
    del prompt[apply_id]["inputs"]["identity"]
    assert any("required input identity missing" in e for e in wc.validate_api(prompt, schema))


@pytest.fixture(scope="module")
def live(comfy_runtime: tuple[Path, str], repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    comfyui, python = comfy_runtime
    out = tmp_path_factory.mktemp("live") / "live.json"
    result = subprocess.run(
        [python, str(repo_root / "scripts" / "workflow_check.py"), "live", "--comfyui", str(comfyui),
         "--out", str(out)], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def test_pack_loads_in_comfyui_without_insightface_or_onnxruntime(live: dict, snapshot: dict) -> None:
    assert live["pack_loaded"], "ComfyUI could not import the pack with insightface/onnxruntime unimportable"
    assert live["our_nodes"] == snapshot["our_nodes"]


def test_snapshot_in_sync_with_real_comfyui(wc, live: dict, snapshot: dict) -> None:
    stale = [
        name for name in sorted(set(snapshot["nodes"]) | set(live["nodes"]))
        if wc.normalise(snapshot["nodes"].get(name, {})) != wc.normalise(live["nodes"].get(name, {}))
    ]
    assert not stale, f"snapshot out of date for {stale}: run scripts/workflow_check.py dump --comfyui PATH"


def test_comfyui_accepts_every_api_prompt(live: dict) -> None:
    assert set(live["validate_prompt"]) == EXPECTED
    for name, verdict in live["validate_prompt"].items():
        assert verdict["ok"], f"{name}: {verdict['error']} {verdict.get('node_errors')}"


def test_comfyui_reads_our_registry_metadata(live: dict) -> None:
    config = live["pyproject"]
    assert config["project"]["name"] == "comfyui-uniid"
    assert config["project"]["supported_comfyui_version"] == ">=0.3.60"
    assert config["tool_comfy"]["publisher_id"] == "uniid-comfy"


def test_download_layout_matches_registered_folders(live: dict) -> None:
    from uniid_core.download import MANIFEST

    registered = {name: paths[0].replace("\\", "/") for name, paths in live["folders"].items()}
    assert registered == {"checkpoints": "models/checkpoints", "uniid": "models/uniid",
                          "insightface": "models/insightface"}
    for entry in MANIFEST:
        top = entry.folder.split("/")[0]
        assert f"models/{entry.folder}".startswith(registered[top]), entry


def v1_view(node_def: dict) -> dict:
    """A V3 node's definition as the V1 node listed it: combos as [choices, options], no V3-only keys,
    no hidden inputs (ComfyUI fills those; prompts never carry them)."""
    view = copy.deepcopy(node_def)
    for key in V3_ONLY_NODE_KEYS:
        view.pop(key, None)
    view["input"].pop("hidden", None)
    view["input_order"].pop("hidden", None)
    for group in view["input"].values():
        for name, spec in group.items():
            options = {k: v for k, v in spec[1].items() if V3_EXPLICIT_DEFAULTS.get(k, object()) != v}
            kind = options.pop("options") if spec[0] == "COMBO" else spec[0]
            group[name] = [kind, options]
    return view


def _input_spec(view: dict, input_name: str) -> list:
    return {**view["input"].get("required", {}), **view["input"].get("optional", {})}[input_name]


def test_nodes_keep_the_interface_saved_workflows_use(live: dict) -> None:
    """Same node ids, input names, types, choices, defaults, ranges and tooltips, same outputs in order;
    only the additions listed in node_interface_added.json (new nodes, appended optional inputs, appended
    choices, tooltips with a sentence appended)."""
    before = json.loads(INTERFACE_V1.read_text())
    additions = json.loads(INTERFACE_ADDED.read_text())
    assert not set(before["nodes"]) & set(additions["nodes"])
    assert sorted([*before["nodes"], *additions["nodes"]]) == live["our_nodes"]
    for name, node_def in before["nodes"].items():
        now = v1_view(live["nodes"][name])
        for group, names in additions["inputs"].get(name, {}).items():
            order = now["input_order"][group]
            assert order[-len(names):] == names, f"{name}: new {group} inputs {names} must come last: {order}"
            del order[-len(names):]
            for input_name in names:
                del now["input"][group][input_name]
        for input_name, added in additions["choices"].get(name, {}).items():
            choices = now["input"]["required"][input_name][0]
            assert choices[-len(added):] == added, (name, input_name, choices)
            del choices[-len(added):]
        for input_name in additions["extended_tooltips"].get(name, []):
            options, stored = _input_spec(now, input_name)[1], _input_spec(node_def, input_name)[1]
            assert options["tooltip"].startswith(stored["tooltip"]), (name, input_name)
            options["tooltip"] = stored["tooltip"]
        assert now == node_def, name
