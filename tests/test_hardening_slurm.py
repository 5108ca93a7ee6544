"""Hardening on a REAL single-node Slurm cluster (tests/slurm_cluster.py): every path the console prints exists, and
a reproduction of a Slurm run keeps the engine settings it ran with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _orchestrator_helpers import manifest, model_root, orchestrator_env, run_orchestrator
from slurm_cluster import SlurmTestCluster, slurm_cluster_fixture  # noqa: F401  (registers `slurm_cluster`)

pytestmark = pytest.mark.slow
MODEL = "blip2-opt-2.7b"
MEMORY = ["--slurm-arg", "mem=3G"]  # the scoring job runs METEOR's JVM: more than the cluster's 1 GB per CPU


def slurm_env(cluster: SlurmTestCluster) -> dict[str, str]:
    return orchestrator_env(SLURM_CONF=str(cluster.conf))


def ablation_args(data_file: Path, root: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["ablation", "--engine", "slurm", "--container-runtime", "none", "--models", MODEL, "--data", data_file,
            "--model-path-root", root, "--output-dir", out, "--batch-size", "2", "--max-new-tokens", "4",
            "--no-report", *extra]  # fmt: skip


def test_every_log_the_console_points_at_exists_when_slurm_scoring_fails(
    slurm_cluster: SlurmTestCluster, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, [MODEL])
    setup = tmp_path / "setup.sh"
    setup.write_text('if [[ "${SLURM_JOB_NAME}" == *-scoring ]]; then echo "no scoring today" >&2; exit 3; fi\n')
    out = tmp_path / "results"
    run = run_orchestrator(
        *ablation_args(data.data_file, root, out, *MEMORY, "--slurm-setup", setup), env=slurm_env(slurm_cluster),
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout[-4000:] + run.stderr[-2000:]
    closing = run.stdout[run.stdout.rindex("Ablation finished") :]
    scoring_line = next(line for line in closing.splitlines() if line.startswith("  scoring   : FAILED"))
    assert scoring_line.endswith("(see logs/scoring.slurm.log)"), scoring_line
    printed = set(re.findall(r"logs/[\w.@#-]+\.log", run.stdout))
    assert printed and all((out / path).is_file() for path in printed), printed
    assert "no scoring today" in (out / "logs" / "scoring.slurm.log").read_text()
    recorded = manifest(out).scoring
    assert recorded is not None and recorded.status == "failed"
    status = run_orchestrator("status", "--output-dir", out, env=slurm_env(slurm_cluster), timeout=120)
    assert status.returncode == 1 and "scoring: failed" in status.stdout, status.stdout


def test_reproduce_of_a_slurm_run_keeps_its_engine_settings(
    slurm_cluster: SlurmTestCluster, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, [MODEL])
    marker = tmp_path / "jobs-that-sourced-the-setup.txt"
    setup = tmp_path / "setup.sh"
    setup.write_text(f'echo "${{SLURM_JOB_NAME}}" >> {marker}\n')
    out = tmp_path / "results"
    first = run_orchestrator(
        *ablation_args(data.data_file, root, out, *MEMORY, "--slurm-setup", setup), env=slurm_env(slurm_cluster),
        timeout=600,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    again = tmp_path / "again"
    reproduced = run_orchestrator(
        "reproduce", "--manifest", out / "run_manifest.json", "--output-dir", again, env=slurm_env(slurm_cluster),
        timeout=600,
    )  # fmt: skip
    assert reproduced.returncode == 0, reproduced.stdout[-4000:] + reproduced.stderr[-2000:]
    assert f"{MODEL}: 2/2 predictions identical" in reproduced.stdout
    original, copy = manifest(out), manifest(again)
    run_id = copy.slurm["run_id"]  # type: ignore[attr-defined]
    sourced = marker.read_text().split()
    assert f"vlm-{run_id}-{MODEL}" in sourced and f"vlm-{run_id}-scoring" in sourced  # its jobs ran the setup file
    for key in ("slurm_args", "slurm_setup", "container_runtime", "shards"):
        assert copy.engine == "slurm" and copy.arguments[key] == original.arguments[key], key
    assert original.engine_settings == {
        "container_runtime": "none", "slurm_args": ["mem=3G"], "slurm_setup": str(setup), "slurm_gpus": 1,
        "slurm_gpu_type": None, "sif_dir": None,
    }  # fmt: skip
    assert copy.engine_settings == original.engine_settings
