"""benchmarks/superglue.py end to end: two FewGLUE tasks (the excerpts in tests/fixtures) on a tiny masked LM with
2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prompt_adapters.testing import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("bert", tmp_path_factory.mktemp("models") / "bert")


def test_two_tasks_two_processes(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        str(ROOT / "benchmarks" / "superglue.py"), "--task", "rte,copa", "--model", str(tiny_bert),
        "--data-dir", str(fixture_data / "superglue"), "--max-steps", "2", "--max-eval", "6", "--seeds", "1",
        "--dev-scoring", "fast", "--output", str(tmp_path),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    jobs = {p.name: json.loads(p.read_text()) for p in (tmp_path / "jobs").glob("*.json")}
    assert set(jobs) == {"RTE-seed42.json", "COPA-seed42.json"}
    assert {tuple(j["process"]) for j in jobs.values()} == {(0, 2), (1, 2)}
    assert jobs["COPA-seed42.json"]["sizes"]["train"] == 16  # the excerpt's 8 examples + their swapped copies
    summary = json.loads((tmp_path / "results.json").read_text())
    for task, key in (("RTE", "accuracy"), ("COPA", "accuracy")):
        assert 0 <= summary["tasks"][task][key]["mean"] <= 100
    table = (tmp_path / "results.md").read_text()
    assert "| RTE | accuracy |" in table and "76.5" in table and "87.0" in table
    assert "ours (one run)" in table and " ± " not in table  # one seed has no spread to show


def test_offline_full_setting_says_what_to_do(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import superglue

    with pytest.raises(Exception, match=r"(?i)offline|super_glue"):
        superglue.main(["--task", "rte", "--model", str(tiny_bert), "--data-dir", str(fixture_data / "superglue"),
                        "--setting", "full", "--seeds", "1", "--output", str(tmp_path)])
