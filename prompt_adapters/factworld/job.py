"""One FactWorld model-training process: ``python -m prompt_adapters.factworld.job JOB.json RESULT.json``.

``build_world`` starts one such process per model with the environment of ``PORTABLE_KERNELS`` already set, because
torch and MKL read it once, when they first compute; a process that has computed cannot switch kernels any more.
The job file holds :func:`train_model`'s arguments as JSON; the result file gets its return value plus the kernel
path torch actually used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from prompt_adapters.factworld.build import train_model
from prompt_adapters.factworld.corpus import Sentence
from prompt_adapters.factworld.pretrain import TrainSpec


def main(job_file: str, result_file: str) -> None:
    """Run the job described in ``job_file`` and write its result to ``result_file``."""
    job = json.loads(Path(job_file).read_text())
    sentences = [
        Sentence(words=tuple(s["words"]), template=s["template"], objects=tuple((i, r) for i, r in s["objects"]))
        for s in job["sentences"]
    ]
    result = train_model(
        job["out_dir"], job["kind"], TrainSpec(**job["spec"]), sentences, job["world"], job["seed"],
        tuple(job["eval_splits"]),
    )
    result["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    tmp = Path(result_file + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
