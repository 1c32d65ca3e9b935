"""Make template thumbnails workflows/*.jpg from the browser test's screenshots (test-artifacts/workflows).

ComfyUI shows `<pack>/workflows/<name>.jpg` as the picture of template `<name>.json`. Run the headless-browser
test first (COMFYUI_PATH set), then `python scripts/make_thumbnails.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SHOTS = REPO_ROOT / "test-artifacts" / "workflows"
CANVAS_OFFSET = (64, 78)
WIDTH = 640


def main() -> int:
    """Crop the app chrome off each screenshot, scale to WIDTH px, save as JPEG next to its workflow."""
    made = 0
    for workflow in sorted((REPO_ROOT / "workflows").glob("*.json")):
        shot = SHOTS / f"{workflow.stem}.png"
        if not shot.is_file():
            print(f"no screenshot for {workflow.name} at {shot}")
            continue
        with Image.open(shot) as image:
            canvas = image.convert("RGB").crop((*CANVAS_OFFSET, *image.size))
            height = round(canvas.height * WIDTH / canvas.width)
            thumbnail = canvas.resize((WIDTH, height), Image.Resampling.LANCZOS)
            thumbnail.save(workflow.with_suffix(".jpg"), quality=82)
        made += 1
        print(f"wrote {workflow.with_suffix('.jpg').relative_to(REPO_ROOT)}")
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
