"""benchmarks/superglue.py on the real SmolLM2-135M (a Llama-architecture causal LM): CB end to end with a small
budget, P-tuning with the LM frozen, scored on a fixed sample of the SuperGLUE dev set.

Needs ``PROMPT_ADAPTERS_SMOLLM2=DIR`` (a folder written by ``python benchmarks/models.py smollm2 --out DIR``) and the
full FewGLUE data (``PROMPT_ADAPTERS_DATA``); skipped without them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import superglue

MODEL_ENV = "PROMPT_ADAPTERS_SMOLLM2"
MODEL_DIR = os.environ.get(MODEL_ENV)

pytestmark = pytest.mark.skipif(
    not MODEL_DIR,
    reason=f"set {MODEL_ENV} to a folder written by `python benchmarks/models.py smollm2 --out DIR` to run the "
    "real-model SuperGLUE test",
)


def test_cb_on_smollm2_end_to_end(full_data: Path, tmp_path: Path) -> None:
    summary = superglue.main([
        "--task", "cb", "--model", str(MODEL_DIR), "--method", "ptuning", "--frozen", "--data-dir",
        str(full_data / "superglue"), "--max-steps", "4", "--batch-size", "8", "--max-eval", "16", "--seeds", "1",
        "--output", str(tmp_path),
    ])
    assert summary["protocol"]["lm_kind"] == "causal"
    cb = summary["tasks"]["CB"]
    assert set(cb) == {"accuracy", "f1_macro"} and all(0 <= v["mean"] <= 100 for v in cb.values())
    job = json.loads((tmp_path / "jobs" / "CB-seed42.json").read_text())
    assert job["sizes"] == {"train": 32, "dev": 32, "test": 16}
    assert len(job["predictions"]) == 16 and set(job["predictions"]) <= {"entailment", "contradiction", "neutral"}
    assert len(job["history"]) == 1 and 0 <= job["history"][0]["dev_p1"] <= 1  # one epoch of 4 steps, on dev32
    report = (tmp_path / "results.md").read_text()
    assert "| CB | accuracy |" in report and "| CB | f1_macro |" in report and "method=ptuning" in report
