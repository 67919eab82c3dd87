"""``build_world``: world, corpus, LAMA files, tokenizers, pretrained models and a measured report.

Each model trains in its own single-threaded process (``workers`` at a time). On two cores this is faster than one
two-threaded process (the matrices are too small for intra-op parallelism to pay) and degrades gracefully when the
cores are shared. The processes run under ``PORTABLE_KERNELS``: one thread and one fixed kernel path for torch and
for MKL, so that the weights do not depend on the machine's core count, on its instruction sets or on the caller's
kernel settings. They still differ between some CPUs (an AMD EPYC and an Intel Xeon gave other bytes), so the report
records the CPU (:func:`cpu_identity`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import AutoTokenizer

from prompt_adapters.factworld.corpus import Sentence, generate_corpus, mine_prompts, template_frequencies
from prompt_adapters.factworld.lama import write_lama
from prompt_adapters.factworld.pretrain import ModelKind, TrainSpec, build_model, encode_corpus, pretrain
from prompt_adapters.factworld.probe import evaluate
from prompt_adapters.factworld.tokenization import (
    object_token_id,
    train_bart_tokenizer,
    train_gpt2_tokenizer,
    train_wordlevel_tokenizer,
)
from prompt_adapters.factworld.world import World, WorldSize, generate_world

MODEL_KINDS: tuple[ModelKind, ...] = ("bert", "gpt2", "bart")
PORTABLE_KERNELS: dict[str, str] = {
    # torch's own kernels (element-wise ops, reductions, softmax, the optimiser): the AVX2 build on every x86-64
    # CPU that has AVX2, AVX-512 ones included; without this each machine uses its widest instruction set.
    "ATEN_CPU_CAPABILITY": "avx2",
    # MKL's matrix products: the one code branch MKL keeps identical on Intel and AMD CPUs (its AVX2 branch is
    # honoured on Intel CPUs only), with a fixed thread count.
    "MKL_CBWR": "COMPATIBLE",
    # oneDNN, which torch uses for some CPU kernels of the masked LM and the denoiser, picks its code by instruction
    # set too: on a CPU with AVX-512 it gives other weights unless it is held to AVX2.
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_DYNAMIC": "FALSE",
    "MKL_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}
"""Environment of every model-training process: with it, a seed gives byte-identical weights on one machine whatever
the caller's kernel settings, and on CPUs of the same kind (same torch version); an AMD EPYC and an Intel Xeon with
AVX-512 gave different bytes even so. It costs speed: MKL's portable branch makes training about twice as slow."""
MEMORISATION_TARGET = 0.9
MANUAL_TARGET = 0.5


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a build besides the seed."""

    world: WorldSize
    models: dict[str, TrainSpec]
    mentions: int = 3
    zipf: float = 1.0
    split_fractions: tuple[float, float] = (0.5, 0.2)
    mined_top_k: int = 10
    workers: int = 2
    eval_splits: tuple[str, ...] = ("train", "dev", "test")


SIZES: dict[str, BuildConfig] = {
    "small": BuildConfig(
        world=WorldSize(persons=60, companies=15, cities=20, countries=12, languages=10, first_names=15),
        models={
            "bert": TrainSpec(layers=2, hidden=128, heads=4, epochs=70, batch_size=16, lr=1e-3, schedule="wsd"),
            "gpt2": TrainSpec(layers=2, hidden=128, heads=4, epochs=25, batch_size=16, lr=3e-3),
            "bart": TrainSpec(layers=1, hidden=128, heads=4, epochs=25, batch_size=16, lr=1e-3),
        },
    ),
    "default": BuildConfig(
        world=WorldSize(persons=240, companies=30, cities=40, countries=20, languages=16, first_names=50),
        models={
            "bert": TrainSpec(layers=3, hidden=128, heads=4, epochs=40, batch_size=32, lr=1e-3, schedule="wsd"),
            "gpt2": TrainSpec(layers=2, hidden=128, heads=4, epochs=25, batch_size=32, lr=3e-3),
            "bart": TrainSpec(layers=1, hidden=128, heads=4, epochs=25, batch_size=32, lr=1e-3),
        },
    ),
}

_TOKENIZERS = {"bert": train_wordlevel_tokenizer, "gpt2": train_gpt2_tokenizer, "bart": train_bart_tokenizer}


def probe_templates(world: World, kind: ModelKind) -> dict[str, dict[str, str]]:
    """The templates the report scores: manual, rank-1 paraphrase, and every paraphrase by rank.

    GPT-2 skips templates that start with ``[Y]`` (nothing to condition on).
    """
    templates: dict[str, dict[str, str]] = {
        "manual": {s.relation: s.manual for s in world.relations},
        "top_paraphrase": {s.relation: s.paraphrases[0] for s in world.relations},
    }
    for rank in range(2, 1 + max(len(s.paraphrases) for s in world.relations)):
        templates[f"paraphrase_{rank}"] = {
            s.relation: s.paraphrases[rank - 1]
            for s in world.relations
            if len(s.paraphrases) >= rank and not (kind == "gpt2" and s.paraphrases[rank - 1].startswith("[Y]"))
        }
    return {name: t for name, t in templates.items() if t}


def train_model(
    out_dir: str,
    kind: ModelKind,
    spec: TrainSpec,
    sentences: list[Sentence],
    world_json: dict,
    seed: int,
    eval_splits: tuple[str, ...],
) -> dict:
    """Pretrain one model on one thread, save it next to its tokenizer in ``out_dir/kind``, and score it."""
    torch.set_num_threads(1)
    start, cpu_start = time.perf_counter(), time.process_time()
    world = World.from_json(world_json)
    tokenizer = AutoTokenizer.from_pretrained(Path(out_dir) / kind)
    torch.manual_seed(seed)
    model = build_model(kind, tokenizer, spec)
    corpus = encode_corpus(tokenizer, sentences)
    stats = pretrain(kind, model, tokenizer, corpus, spec, seed=seed, position=MODEL_KINDS.index(kind))
    train_wall, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    model.save_pretrained(Path(out_dir) / kind)
    scores = evaluate(kind, model, tokenizer, world, probe_templates(world, kind), eval_splits)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "spec": asdict(spec),
        "train": stats,
        # Wall time depends on what else runs on the machine; CPU time of this single-threaded job does not.
        "seconds": {
            "train_wall": train_wall,
            "train_cpu": train_cpu,
            "eval_wall": time.perf_counter() - start - train_wall,
            "eval_cpu": time.process_time() - cpu_start - train_cpu,
        },
        "p_at_1": scores,
    }


def _cache_sizes() -> dict[str, str]:
    """Sizes of the first core's data and unified caches by level (``L1d``, ``L2``, ``L3``), as Linux reports them."""
    sizes: dict[str, str] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            sizes[f"L{level}{'d' if kind == 'Data' else ''}"] = size
    return sizes


def cpu_identity() -> dict[str, str | dict[str, str]]:
    """The CPU this process runs on: vendor, model name, family, model and cache sizes.

    The weights' bytes depend on the CPU even under ``PORTABLE_KERNELS`` (docs/factworld.md, "Determinism"), so a
    report says which CPU computed them. Read from Linux's ``/proc/cpuinfo`` and ``/sys``; elsewhere only the vendor
    is known, from :func:`platform.processor`, and the other fields are empty.
    """
    fields = {"vendor_id": "", "model name": "", "cpu family": "", "model": ""}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in fields and not fields[key]:
            fields[key] = value.strip()
        if not line.strip() and fields["vendor_id"]:
            break
    return {
        "vendor": fields["vendor_id"] or platform.processor(),
        "model_name": fields["model name"],
        "family": fields["cpu family"],
        "model": fields["model"],
        "caches": _cache_sizes(),
    }


def _makespan(job_seconds: list[float], workers: int) -> float:
    """Wall time of the jobs on ``workers`` idle cores, longest first, each to the first free worker."""
    finish = [0.0] * max(1, workers)
    for seconds in sorted(job_seconds, reverse=True):
        finish[finish.index(min(finish))] += seconds
    return max(finish)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_data(out: Path, world: World, config: BuildConfig, seed: int, timings: dict[str, float]) -> dict:
    """Write world.json, corpus.txt, the LAMA folder and the three tokenizers; return corpus and sizes.

    Stage wall times are added to ``timings``.
    """
    start = time.perf_counter()
    world.save(out / "world.json")
    sentences = generate_corpus(world, config.mentions, config.zipf, seed)
    lines = [s.text for s in sentences]
    (out / "corpus.txt").write_text("".join(line + "\n" for line in lines))
    timings["corpus"] = time.perf_counter() - start

    start = time.perf_counter()
    split_counts = write_lama(
        world, out / "lama", template_frequencies(world, sentences), mine_prompts(world, lines, config.mined_top_k)
    )
    timings["lama"] = time.perf_counter() - start

    start = time.perf_counter()
    # Entity names are added alone, with and without a leading space, so that BPE has a single token for
    # both spellings of every object even if the corpus only ever uses one of them.
    names = [name for group in world.entities.values() for name in group]
    vocab_sizes: dict[str, int] = {}
    for kind, train in _TOKENIZERS.items():
        tokenizer = train(lines + names + [" " + name for name in names])
        for name in world.all_objects():
            object_token_id(tokenizer, name)
            object_token_id(tokenizer, name, leading_space=False)
        tokenizer.save_pretrained(out / kind)
        vocab_sizes[kind] = len(tokenizer)
    timings["tokenizers"] = time.perf_counter() - start
    return {
        "sentences": sentences,
        "sizes": {
            "entities": {t: len(group) for t, group in world.entities.items()},
            "relations": len(world.relations),
            "facts": sum(len(f) for f in world.facts.values()),
            "facts_per_split": split_counts,
            "corpus_sentences": len(lines),
            "corpus_words": sum(len(s.words) for s in sentences),
            "vocab": vocab_sizes,
        },
    }


def _train_in_process(job: dict, folder: Path) -> dict:
    """Run one :func:`train_model` job in a fresh Python process under ``PORTABLE_KERNELS``; return its result."""
    job_file, result_file = folder / f"{job['kind']}-job.json", folder / f"{job['kind']}-result.json"
    job_file.write_text(json.dumps(job))
    command = [sys.executable, "-m", "prompt_adapters.factworld.job", str(job_file), str(result_file)]
    code = subprocess.run(command, env={**os.environ, **PORTABLE_KERNELS}, check=False).returncode
    if code != 0:
        raise RuntimeError(f"training the FactWorld {job['kind']} model failed (exit status {code}); "
                           "its error is printed above")
    return json.loads(result_file.read_text())


def _run_jobs(jobs: list[dict], workers: int) -> dict[str, dict]:
    """Run the training jobs, each in its own process, at most ``workers`` at a time; results by model kind."""
    # Longest job first, so that the short ones fill the other worker (cost ~ epochs x layers, BART has two stacks).
    def cost(job: dict) -> int:
        return job["spec"]["epochs"] * job["spec"]["layers"] * (2 if job["kind"] == "bart" else 1)

    by_cost = sorted(jobs, key=cost, reverse=True)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {job["kind"]: pool.submit(_train_in_process, job, Path(tmp)) for job in by_cost}
        return {job["kind"]: futures[job["kind"]].result() for job in jobs}


def build_world(
    out_dir: str | Path,
    size: str = "default",
    seed: int = 0,
    *,
    config: BuildConfig | None = None,
    models: tuple[ModelKind, ...] = MODEL_KINDS,
) -> dict:
    """Build a FactWorld under ``out_dir`` and return (and write) its report.

    ``size`` picks a preset from :data:`SIZES`; ``config`` overrides it (e.g. fewer epochs in tests).
    ``models`` selects which models to pretrain (only those cost time: the masked LM alone is about half of a
    full build); the world, corpus, LAMA files and all tokenizers are always written. Same seed and config give
    byte-identical files; the weights are byte-identical on the same kind of CPU (see ``PORTABLE_KERNELS``), which
    the report records under ``machine.cpu``.
    """
    if config is None:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}, expected one of {sorted(SIZES)}")
        config = SIZES[size]
    unknown = [m for m in models if m not in config.models]
    if unknown:
        raise ValueError(
            f"models {unknown} have no TrainSpec in the config; expected a subset of {sorted(config.models)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]
    total_start, cpu_start = time.perf_counter(), time.process_time()

    start = time.perf_counter()
    world = generate_world(config.world, seed, config.split_fractions)
    timings = {"world": time.perf_counter() - start}
    data = write_data(out, world, config, seed, timings)

    world_json = world.to_json()
    sentences = [asdict(sentence) for sentence in data["sentences"]]
    jobs = [
        {"out_dir": str(out), "kind": kind, "spec": asdict(config.models[kind]), "sentences": sentences,
         "world": world_json, "seed": seed, "eval_splits": list(config.eval_splits)}
        for kind in models
    ]
    start = time.perf_counter()
    results = _run_jobs(jobs, config.workers)
    timings["models_wall"] = time.perf_counter() - start
    for kind, result in results.items():
        timings[f"{kind}_wall"] = result["seconds"]["train_wall"] + result["seconds"]["eval_wall"]
        timings[f"{kind}_cpu"] = result["seconds"]["train_cpu"] + result["seconds"]["eval_cpu"]
    timings["total"] = time.perf_counter() - total_start
    # On a busy machine wall times grow; this estimates the wall time on idle cores from CPU times.
    timings["main_process_cpu"] = time.process_time() - cpu_start
    capabilities = sorted({result.pop("aten_cpu_capability") for result in results.values()})
    timings["estimated_idle_wall"] = timings["main_process_cpu"] + _makespan(
        [timings[f"{kind}_cpu"] for kind in results], config.workers
    )

    report = {
        "size": size if config is SIZES.get(size) else "custom",
        "seed": seed,
        "config": asdict(config),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_identity(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg()[0],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "kernels": {
                **PORTABLE_KERNELS,
                "aten_cpu_capability_used": capabilities,
            },
        },
        "timings_s": timings,
        "sizes": data["sizes"],
        "hashes": {name: _file_digest(out / name) for name in ("world.json", "corpus.txt")},
        "models": results,
        "targets": _targets(results),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _targets(results: dict[str, dict]) -> dict[str, dict]:
    """The quality checks of the issue, measured on the masked LM with type-restricted candidates."""
    if "bert" not in results:
        return {}
    p = results["bert"]["p_at_1"]
    memorised = p["top_paraphrase"]["train"]["type"]["macro"]
    manual = p["manual"]["test"]["type"]["macro"] if "test" in p["manual"] else p["manual"]["train"]["type"]["macro"]
    return {
        "memorisation": {
            "value": memorised,
            "target": f">= {MEMORISATION_TARGET}",
            "met": memorised >= MEMORISATION_TARGET,
        },
        "manual": {"value": manual, "target": f"<= {MANUAL_TARGET}", "met": manual <= MANUAL_TARGET},
    }


def with_epochs(config: BuildConfig, epochs: int) -> BuildConfig:
    """``config`` with every model trained for ``epochs`` (for quick determinism checks)."""
    return replace(config, models={k: replace(v, epochs=epochs) for k, v in config.models.items()})


def format_report(report: dict) -> str:
    """A short human-readable summary of a build report: stage times, sizes, P@1 table and targets."""
    t = report["timings_s"]
    s = report["sizes"]
    lines = [
        f"FactWorld build: size={report['size']} seed={report['seed']} total {t['total']:.0f} s",
        "  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items() if k != "total"),
        f"  {s['relations']} relations, {s['facts']} facts (split {s['facts_per_split']}), "
        f"entities {s['entities']}, corpus {s['corpus_sentences']} sentences / {s['corpus_words']} words, "
        f"vocab {s['vocab']}",
        "  P@1 macro over relations, candidates = objects of the relation's type / all objects:",
        f"  {'model':6} {'template':16} " + " ".join(f"{split:>11}" for split in report["config"]["eval_splits"]),
    ]
    for kind, result in report["models"].items():
        for name, by_split in result["p_at_1"].items():
            cells = " ".join(
                f"{by_split[split]['type']['macro']:5.3f}/{by_split[split]['all']['macro']:5.3f}"
                for split in report["config"]["eval_splits"]
            )
            lines.append(f"  {kind:6} {name:16} {cells}")
    for name, target in report["targets"].items():
        status = "met" if target["met"] else "NOT MET"
        lines.append(f"  target {name}: {target['value']:.3f} (want {target['target']}) {status}")
    return "\n".join(lines)
