"""Headless Chromium opens a real ComfyUI with the pack installed and loads every example workflow.

Needs COMFYUI_PATH (+ COMFYUI_PYTHON with ComfyUI's requirements) and Debian's Chromium (/usr/bin/chromium,
`apt-get install chromium`). Screenshots land in test-artifacts/workflows/.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
VIEW = (2400, 1500)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--window-size={VIEW[0]},{VIEW[1]}",
)
SETTINGS = {
    "Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}

LOAD_AND_INSPECT = """(async (workflow, name) => {
  await app.loadGraphData(workflow, true, true, name);
  const nodes = app.graph.nodes || app.graph._nodes;
  const sizes = () => JSON.stringify(nodes.map((n) => [n.size[0], n.size[1]]));
  const previews = () => nodes.every((n) => n.type !== "LoadImage" || (n.imgs && n.imgs.length));
  const canvas = app.canvas;
  const box = canvas.canvas.getBoundingClientRect();
  const width = Math.min(box.right, window.innerWidth) - box.left;
  const height = Math.min(box.bottom, window.innerHeight) - box.top;
  let scale = 1;
  let before = "";
  for (let i = 0; i < 25 && (sizes() !== before || !previews()); i++) {
    before = sizes();
    const left = Math.min(...nodes.map((n) => n.pos[0])) - 60;
    const top = Math.min(...nodes.map((n) => n.pos[1])) - 120;
    const right = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 60;
    const bottom = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 60;
    scale = Math.min(width / (right - left), height / (bottom - top));
    canvas.ds.scale = scale;
    canvas.ds.offset[0] = -left + (width / scale - (right - left)) / 2;
    canvas.ds.offset[1] = -top + (height / scale - (bottom - top)) / 2;
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    await new Promise((done) => setTimeout(done, 400));
  }
  const registered = window.LiteGraph ? window.LiteGraph.registered_node_types : {};
  const report = nodes.map((n) => {
    const x = (n.pos[0] + canvas.ds.offset[0]) * scale, y = (n.pos[1] + canvas.ds.offset[1]) * scale;
    return {
      id: n.id, type: n.type, registered: n.type in registered, has_errors: !!n.has_errors,
      widgets: (n.widgets || []).filter((w) => !w.name.startsWith("$$")).map((w) => [w.name, w.value]),
      on_screen: x >= 0 && y >= 0 && x + n.size[0] * scale <= width && y + n.size[1] * scale <= height,
      size: [n.size[0], n.size[1]], collapsed: !!(n.flags && n.flags.collapsed),
    };
  });
  const prompt = await app.graphToPrompt();
  const dialogs = [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText.slice(0, 500));
  return JSON.stringify({report, output: prompt.output, dialogs});
})"""


class Chromium:
    """Debian's Chromium driven by the DevTools protocol over --remote-debugging-pipe (no extra packages)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_read, self._to_write = os.pipe()
        self._from_read, from_write = os.pipe()
        script = f'exec "$0" "$@" 3<&{to_read} 4>&{from_write}'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_read, from_write), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_read)
        os.close(from_write)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict] = []
        self.session = ""

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        """Send one command (on the attached page when there is one) and wait for its answer."""
        self._last_id += 1
        message: dict = {"id": self._last_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._to_write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_read], [], [], left)
            if ready:
                chunk = os.read(self._from_read, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe (did it start?)")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open_page(self, url: str) -> None:
        """Open a tab, attach to it, and navigate."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": VIEW[0], "height": VIEW[1], "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str, timeout: float = 60) -> object:
        """Evaluate JavaScript in the page (awaiting promises) and return its value."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {json.dumps(result['exceptionDetails'])[:2000]}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """Save a PNG of the page."""
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        """Close the browser and reap it."""
        try:
            os.write(self._to_write, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_write)
        os.close(self._from_read)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll the local ComfyUI server (loopback only) until it answers /system_stats."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/system_stats")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(1)
        finally:
            connection.close()
    raise TimeoutError(f"ComfyUI did not start within {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def comfy_server(comfy_runtime: tuple[Path, str], repo_root: Path, scripts_on_path: Path,
                 chromium_path: str) -> Iterator[str]:
    import workflow_check

    comfyui, python = comfy_runtime
    base = Path(tempfile.mkdtemp(prefix="uniid-browser-"))
    try:
        for sub in ("models", "input", "output", "temp", "user/default", "custom_nodes"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(SETTINGS))
        os.symlink(repo_root, base / "custom_nodes" / workflow_check.PACK_NAME)
        workflow_check.write_placeholders(base)
        port = _free_port()
        log = base / "comfyui.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                 "--disable-auto-launch", "--base-directory", str(base)],
                cwd=comfyui, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for_server(port, proc, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            artifacts = repo_root / "test-artifacts" / "workflows"
            artifacts.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, artifacts / "comfyui-server.log")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(comfy_server: str, chromium_path: str) -> Iterator[Chromium]:
    profile = Path(tempfile.mkdtemp(prefix="uniid-chromium-profile-"))
    chrome = Chromium(chromium_path, profile)
    try:
        chrome.open_page(comfy_server + "/")
        deadline = time.monotonic() + 120
        while not chrome.evaluate("!!(window.app && window.app.graph && window.app.canvas)"):
            if time.monotonic() > deadline:
                raise TimeoutError("the ComfyUI page did not finish loading")
            time.sleep(0.5)
        time.sleep(1.5)
        yield chrome
    finally:
        chrome.close()
        shutil.rmtree(profile, ignore_errors=True)


DISPLAY_WIDGETS = {"PreviewAny": {"preview"}}
"""Widgets the frontend adds to a node only to show a result (Preview Any's text box); they go into the
queued prompt, and ComfyUI ignores them."""


def _comparable(prompt: dict) -> dict:
    return {
        k: {
            "class_type": v["class_type"],
            "inputs": {
                name: value for name, value in v["inputs"].items()
                if name not in DISPLAY_WIDGETS.get(v["class_type"], ())
            },
        }
        for k, v in prompt.items()
    }


def test_every_workflow_loads_and_renders(browser: Chromium, repo_root: Path, scripts_on_path: Path) -> None:
    import workflow_check

    schema = workflow_check.load_snapshot()["nodes"]
    artifacts = repo_root / "test-artifacts" / "workflows"
    artifacts.mkdir(parents=True, exist_ok=True)
    problems = []
    for name, workflow in workflow_check.load_workflows().items():
        raw = browser.evaluate(f"{LOAD_AND_INSPECT}({json.dumps(workflow)}, {json.dumps(name)})", timeout=120)
        result = json.loads(raw)
        browser.screenshot(artifacts / name.replace(".json", ".png"))
        (artifacts / name.replace(".json", ".report.json")).write_text(json.dumps(result, indent=1))
        report = result["report"]
        if len(report) != len(workflow["nodes"]):
            problems.append(f"{name}: {len(report)} nodes drawn, {len(workflow['nodes'])} in the file")
        for node in report:
            label = f"{name}: node {node['id']} ({node['type']})"
            if not node["registered"] or node["has_errors"]:
                problems.append(f"{label} is reported missing or broken")
            if not node["on_screen"] or node["collapsed"] or min(node["size"]) <= 0:
                problems.append(f"{label} is not rendered in view")
        missing = [d for d in result["dialogs"] if "missing" in d.lower()]
        if missing:
            problems.append(f"{name}: the page reports missing parts: {missing}")
        expected = _comparable(workflow_check.ui_to_api(workflow, schema))
        if _comparable(result["output"]) != expected:
            problems.append(f"{name}: the frontend's API prompt differs from ui_to_api: {result['output']}")
    errors = [e["params"] for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")]
    (artifacts / "page-errors.json").write_text(json.dumps(errors, indent=1))
    assert not problems, "\n".join(problems)


def test_comfyui_serves_a_help_page_for_every_node(comfy_server: str, scripts_on_path: Path) -> None:
    import workflow_check

    port = int(comfy_server.rsplit(":", 1)[1])
    for name in workflow_check.load_snapshot()["our_nodes"]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", f"/extensions/{workflow_check.PACK_NAME}/docs/{name}.md")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        assert response.status == 200, f"the node library would show no help for {name}"
        assert body.startswith("# UniID ") and "## Inputs" in body
