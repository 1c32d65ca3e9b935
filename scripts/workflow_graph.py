"""Build ComfyUI UI-format (0.4) workflows from node definitions, keeping sockets and widgets exact."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from workflow_check import extra_widgets, input_specs, is_widget

NOTE_COLOR = "#432"
NOTE_BGCOLOR = "#653"
GROUP_COLORS = {
    "blue": "#3f789e", "green": "#8A8", "red": "#b06634", "purple": "#a1309b", "yellow": "#b58b2a",
}


@dataclass
class Node:
    """One node of the graph being built."""

    id: int
    type: str
    pos: tuple[float, float]
    size: tuple[float, float]
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    widgets_values: list[Any] = field(default_factory=list)
    title: str | None = None
    color: str | None = None
    bgcolor: str | None = None

    def to_json(self, order: int) -> dict:
        """The node as the frontend serialises it."""
        data = {
            "id": self.id, "type": self.type, "pos": list(self.pos), "size": list(self.size), "flags": {},
            "order": order, "mode": 0, "inputs": self.inputs, "outputs": self.outputs,
            "properties": {"Node name for S&R": self.type}, "widgets_values": self.widgets_values,
        }
        if self.title:
            data["title"] = self.title
        if self.color:
            data["color"], data["bgcolor"] = self.color, self.bgcolor
        return data


class Graph:
    """Collects nodes, links, notes and groups, then writes the UI JSON."""

    def __init__(self, schema: dict[str, dict]) -> None:
        self.schema = schema
        self.nodes: list[Node] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def add(self, kind: str, pos: tuple[float, float], title: str | None = None, node_width: float = 320,
            **widgets: Any) -> Node:
        """Add a node; widget values default to the definition's defaults, overridden by keyword."""
        node_def = self.schema[kind]
        specs = input_specs(node_def)
        unknown = set(widgets) - {s[0] for s in specs}
        if unknown:
            raise KeyError(f"{kind} has no widget(s) {sorted(unknown)}")
        values: list[Any] = []
        sockets = []
        multiline = 0
        for name, itype, opts, choices, _ in specs:
            if is_widget(itype, opts):
                value = widgets.get(name, opts.get("default", choices[0] if choices else None))
                if value is None:
                    raise KeyError(f"{kind}.{name} needs a value: it has no default")
                values.append(value)
                extra = extra_widgets(name, itype, opts)
                if extra and opts.get("image_upload"):
                    values.extend(["fixed"] * (extra - 1) + ["image"])
                else:
                    values.extend(["fixed"] * extra)
                multiline += bool(opts.get("multiline"))
            else:
                sockets.append({"name": name, "type": itype, "link": None})
        outputs = [
            {"name": name, "type": otype, "links": [], "slot_index": i}
            for i, (otype, name) in enumerate(zip(node_def["output"], node_def["output_name"], strict=True))
        ]
        rows = max(len(sockets), len(outputs))
        previews = sum(bool(s[2].get("image_upload")) for s in specs)
        height = 46 + 22 * rows + 26 * (len(values) - multiline) + 90 * multiline + 230 * previews
        node = Node(len(self.nodes) + 1, kind, pos, (node_width, height), sockets, outputs, values, title)
        self.nodes.append(node)
        return node

    def note(self, text: str, pos: tuple[float, float], size: tuple[float, float] = (380, 200),
             title: str = "Note") -> Node:
        """A Note node (frontend-only) with instructions for the user."""
        node = Node(len(self.nodes) + 1, "Note", pos, size, [], [], [text], title, NOTE_COLOR, NOTE_BGCOLOR)
        self.nodes.append(node)
        return node

    def connect(self, src: Node, output: str, dst: Node, input_name: str) -> None:
        """Link src's output (by name) to dst's input (by name); a widget input gets a socket entry."""
        out_slot = next(i for i, o in enumerate(src.outputs) if o["name"] == output)
        if not any(s["name"] == input_name for s in dst.inputs):
            spec = next(s for s in input_specs(self.schema[dst.type]) if s[0] == input_name)
            socket = {"name": input_name, "type": spec[1], "widget": {"name": input_name}, "link": None}
            dst.inputs.append(socket)
        in_slot = next(i for i, s in enumerate(dst.inputs) if s["name"] == input_name)
        link_id = len(self.links) + 1
        link_type = src.outputs[out_slot]["type"]
        self.links.append([link_id, src.id, out_slot, dst.id, in_slot, link_type])
        src.outputs[out_slot]["links"].append(link_id)
        dst.inputs[in_slot]["link"] = link_id

    def group(self, title: str, members: list[Node], color: str = "blue") -> None:
        """A coloured frame around the given nodes."""
        left = min(n.pos[0] for n in members) - 20
        top = min(n.pos[1] for n in members) - 60
        right = max(n.pos[0] + n.size[0] for n in members) + 20
        bottom = max(n.pos[1] + n.size[1] for n in members) + 20
        self.groups.append({
            "id": len(self.groups) + 1, "title": title, "bounding": [left, top, right - left, bottom - top],
            "color": GROUP_COLORS[color], "font_size": 24, "flags": {},
        })

    def to_json(self, name: str) -> dict:
        """The whole workflow in UI format 0.4."""
        for node in self.nodes:
            for out in node.outputs:
                if not out["links"]:
                    out["links"] = None
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"uniid-workflow-{name}")),
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": [n.to_json(i) for i, n in enumerate(self.nodes)],
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.65, "offset": [40, 60]}, "frontendVersion": "1.27.10"},
            "version": 0.4,
        }
