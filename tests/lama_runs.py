"""Running benchmarks/lama.py as users do (a subprocess, optionally under accelerate) for the harness tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "lama.py"


def launch(args: list[str], processes: int = 1) -> subprocess.Popen:
    """Start lama.py with ``args`` in one process, or in ``processes`` CPU processes through accelerate."""
    command = [sys.executable, str(SCRIPT), *args] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        str(SCRIPT), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    """Wait for a run, fail with the end of its log if it did not succeed, and return the log."""
    log, _ = proc.communicate(timeout=600)
    errors = [line for line in log.splitlines() if "Error" in line or "SystemExit" in line or "already" in line]
    assert proc.returncode == 0, "\n".join(errors[:30]) + "\n...\n" + log[-3000:]
    return log


def kill_once_written(proc: subprocess.Popen, path: Path) -> None:
    """Kill the run as soon as ``path`` exists (a checkpoint written mid-run), as a crash would."""
    deadline = time.time() + 600
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()


def records(out: Path) -> dict[str, dict]:
    """The per-relation records of a run, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "relations").glob("*.json"))}
