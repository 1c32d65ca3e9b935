"""benchmarks/bench_train.py runs from a clone alone (no shared data) and reports honest ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.training.conftest import insightface_images

REPO = Path(__file__).resolve().parents[2]


def test_bench_train_runs_from_the_repo_alone(tmp_path: Path) -> None:
    insightface_images()
    env = {k: v for k, v in os.environ.items() if k not in ("UNIID_GOLDEN_DIR", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--rounds", "1", "--steps", "1"]
    done = subprocess.run(
        [*command, "--workers", "0", "--num-photos", "6"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    speed, peak, resident = (
        summary["images_per_s"],
        summary["peak_memory_mib"],
        summary["resident_memory_mib"],
    )
    assert speed["trainer"] > 0 and speed["baseline"] > 0
    assert summary["ratio_images_per_s_trainer_over_baseline"] == round(
        speed["trainer"] / speed["baseline"], 2
    )
    assert summary["ratio_peak_memory_trainer_over_baseline"] > 0
    assert peak["trainer"] >= resident["trainer"] > 0 and peak["baseline"] >= resident["baseline"] > 0
    same_models = abs(resident["trainer"] - resident["baseline"]) <= 0.05 * resident["baseline"]
    assert same_models, "both sides keep UNet, VAE, text encoders, face net and branch: count them all"
    assert summary["threads"]["torch_intra_op"] == 1
    assert summary["precision"] == "fp32" and summary["tokenizers"].startswith("built here")
