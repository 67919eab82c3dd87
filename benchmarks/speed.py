"""Speed and memory: train-step time, peak memory and scoring throughput of the prompt methods, and joint training
of many relations against separate steps, in one run.

    python benchmarks/speed.py [--model-size base|small] [--device cpu|cuda] [--only all|methods|joint] \
        [--joint-relations 8,41] [--repeats N] [--max-repeats M] [--batch B] [--seq-len L] [--eval-batch E] \
        [--threads T] [--clock wall|cpu] [--allocator retain|system] [--out runs/speed]
    python benchmarks/speed.py --model DIR ...      # a pretrained masked or causal LM instead (e.g. SmolLM2)

Models are built from configs, nothing is downloaded: a BERT-base-sized masked LM (vocabulary 28996) and a
GPT-2-sized causal LM (``--model-size small``: tiny configs for quick runs and the test); ``--model DIR`` measures
one pretrained masked or causal LM from a local folder instead (e.g. SmolLM2-135M from benchmarks/models.py).
Every variant of one model shares the same frozen weights and the same examples. A warm-up pass over all variants
measures peak memory; then each round runs every variant once, round-robin with a rotating start; ratios whose
spread is wide get more rounds (bounded), and the report gives medians with their spread. The joint-training
comparison (``--only joint``) runs on the masked LM: one step of R P-tuning adapters in one batch against R separate
steps. PromptGen (its whole generator trained, and a LoRA generator) is timed beside its lower bound: the same step
with the generator run once, teacher-forced, instead of writing one token at a time. See docs/speed.md for what each
variant does and how to read the numbers.

The report goes to ``--out``: a folder (``speed.md`` in it, ``speed-<model folder>.md`` with --model; by default
runs/speed) or a ``.md`` file. ``--out benchmarks/results`` refreshes the published report of the same name.

This file holds the report, its targets and the command line; the models, variants, clocks and memory measurement
are in ``speed_measurement.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import peft
import torch
import transformers
from tqdm.auto import tqdm

from prompt_adapters.run_dir import positive_int

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_measurement import (
    CLOCKS,
    DEEP,
    FAMILIES,
    FLOOR,
    JOINT_BATCH,
    MIXTURE_SIZES,
    PEFT_PT,
    PROMPTGEN,
    PROMPTGEN_BOUND,
    PROMPTGEN_BOUND_LIMIT,
    PROMPTGEN_LORA,
    PROMPTGEN_LORA_BOUND,
    PROMPTGEN_MEMORY_LIMIT,
    SINGLE,
    Family,
    JointVariant,
    Variant,
    build_family,
    build_joint_variants,
    build_variants,
    joint_name,
    mixture_name,
    peak_bytes,
    retain_freed_memory,
    save_generator,
    timed,
)
from speed_measurement import PEFT_PTUNING as PEFT_PTUNING
from speed_measurement import PTUNING as PTUNING
from speed_measurement import PTUNING_TEMPLATES as PTUNING_TEMPLATES
from speed_measurement import TEMPLATES as TEMPLATES
from speed_measurement import JointComparison as JointComparison
from speed_measurement import PeakTensorMemory as PeakTensorMemory
from speed_measurement import template as template

# ------------------------------------------------------------------------------------------------ report


def machine(device: torch.device) -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = (f"{cpu}; {os.cpu_count()} logical cores ({usable} usable); torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op thread(s); transformers {transformers.__version__}; "
            f"peft {peft.__version__}; Python {platform.python_version()}")
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


CLOCK_TEXT = {"wall": "times are wall-clock", "cpu": "times are CPU time of the benchmark process"}


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def mb(size: float) -> str:
    return f"{size / 2**20:,.1f}"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}×"


def spread(times: Sequence[float]) -> str:
    return f"{ms(min(times))}–{ms(max(times))}"


def quartiles(samples: Sequence[float]) -> tuple[float, float]:
    """First and third quartile (inclusive method; a single sample is both)."""
    if len(samples) < 2:
        return samples[0], samples[0]
    first, _, third = statistics.quantiles(samples, n=4, method="inclusive")
    return first, third


def paired_ratios(numerator: Variant, denominator: Variant) -> list[float]:
    """``numerator / denominator`` time of every round both ran in: a round's load affects both alike."""
    return [numerator.rounds[r] / denominator.rounds[r] for r in sorted(numerator.rounds.keys() & denominator.rounds)]


@dataclass
class Check:
    """One target of the issue: measured ratio against its limit.

    A timing ratio keeps its per-round ``samples`` (the value is their median) and the variants it pairs; its
    spread is the interquartile range of the samples. A memory ratio has no samples (it does not vary).
    """

    what: str
    family: str
    value: float
    limit: float
    at_least: bool = False
    samples: list[float] | None = None
    variants: tuple[Variant, ...] = field(default=(), repr=False)

    @classmethod
    def timing(cls, what: str, family: str, numerator: Variant, denominator: Variant, limit: float,
               at_least: bool = False) -> Check:
        """The ratio of two variants' times, from the rounds both ran in."""
        samples = paired_ratios(numerator, denominator)
        return cls(what, family, statistics.median(samples), limit, at_least, samples, (numerator, denominator))

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def relative_spread(self) -> float:
        """Interquartile range over the median (0 without samples)."""
        if not self.samples:
            return 0.0
        first, third = quartiles(self.samples)
        return (third - first) / self.value

    @property
    def crosses_limit(self) -> bool:
        """Whether the limit lies inside the interquartile range: this run does not decide the target."""
        if not self.samples:
            return False
        first, third = quartiles(self.samples)
        return first <= self.limit <= third

    def unsettled(self, tolerance: float) -> bool:
        """Whether more rounds are needed: the spread crosses the limit or exceeds ``tolerance`` of the median."""
        return self.crosses_limit or self.relative_spread > tolerance

    def row(self) -> str:
        sign = "≥" if self.at_least else "≤"
        verdict = "PASS" if self.passed else "FAIL"
        if self.crosses_limit:
            verdict += " (limit inside the spread)"
        if self.samples:
            first, third = quartiles(self.samples)
            spread_cells = f"{first:.2f}–{third:.2f}× | {self.relative_spread:.0%} | {len(self.samples)}"
        else:
            spread_cells = "– | – | –"
        limit = f"{sign} {self.limit:.2f}×"
        return f"| {self.what} | {self.family} | {self.value:.2f}× | {spread_cells} | {limit} | {verdict} |"


def by_kind(variants: list[Variant], family: str) -> tuple[dict[str, Variant], dict[str, Variant]]:
    """The train-step and the scoring variants of ``family``, by name."""
    mine = [v for v in variants if v.family == family]
    return ({v.name: v for v in mine if v.kind == "train"}, {v.name: v for v in mine if v.kind == "scoring"})


def checks(family: str, train: dict[str, Variant], evaluation: dict[str, Variant]) -> list[Check]:
    if not train:
        return []
    floor, single, peft_pt = train[FLOOR], train[SINGLE], train[PEFT_PT]
    out = [
        Check.timing("single soft prompt step / PEFT PROMPT_TUNING", family, single, peft_pt, 0.9),
        Check.timing("single soft prompt step / floor", family, single, floor, 1.05),
    ]
    for k in MIXTURE_SIZES:
        out.append(Check.timing(f"mixture K={k} step / single", family, train[mixture_name(k)], single, 1.1 * k))
    out.append(Check.timing("deep step / single", family, train[DEEP], single, 1.1))
    # throughput ratio = floor time / single time
    out.append(Check.timing("scoring throughput / floor", family, evaluation[FLOOR], evaluation[SINGLE], 0.95,
                            at_least=True))
    for name, variant in train.items():
        if name.startswith("ours") and "PromptGen" not in name:
            k = variant.templates
            rows = f", B·{k} rows" if k > 1 else ""
            what = f"peak memory / floor ({name.removeprefix('ours: ')}{rows})"
            out.append(Check(what, family, variant.peak / floor.peak, 1.1 * k))
    if PROMPTGEN in train:
        out.append(Check.timing("PromptGen step / its lower bound", family, train[PROMPTGEN], train[PROMPTGEN_BOUND],
                                PROMPTGEN_BOUND_LIMIT))
        lora = train[PROMPTGEN_LORA]
        out.append(Check.timing("PromptGen step / its lower bound (LoRA generator)", family, lora,
                                train[PROMPTGEN_LORA_BOUND], PROMPTGEN_BOUND_LIMIT))
        # only a parameter-efficient generator has a memory target: a fully trained one's gradients and Adam state
        # alone exceed it
        out.append(Check("peak memory / floor (PromptGen, LoRA generator)", family, lora.peak / floor.peak,
                         PROMPTGEN_MEMORY_LIMIT))
    return out


#: the issue's joint-training targets: joint rows/s over separate rows/s, on CPUs (every R) and on a GPU (R = 41)
JOINT_TARGETS = {"cpu": 1.5, "cuda": 8.0}
JOINT_GPU_RELATIONS = 41


def joint_pairs(variants: list[Variant], family: str) -> list[tuple[JointVariant, JointVariant]]:
    """(joint, separate) variant pairs of ``family``, by R."""
    mine = {v.name: v for v in variants if v.family == family and isinstance(v, JointVariant)}
    counts = dict.fromkeys(v.relations for v in mine.values())
    return [(mine[joint_name(r, True)], mine[joint_name(r, False)]) for r in counts]


def joint_checks(family: str, variants: list[Variant], device: torch.device) -> list[Check]:
    out = []
    for joint, separate in joint_pairs(variants, family):
        relations = joint.relations
        if device.type == "cuda" and relations != JOINT_GPU_RELATIONS:
            continue
        # rows/s ratio = separate time / joint time (the same rows)
        out.append(Check.timing(f"joint / separate rows per second, R={relations}", family, separate, joint,
                                JOINT_TARGETS[device.type], at_least=True))
    return out


def settle(
    run_round: Callable[[int, list[Variant] | None], None],
    current_checks: Callable[[], list[Check]],
    first: int,
    most: int,
    tolerance: float,
) -> int:
    """Run ``first`` rounds of every variant, then rounds of only the variants behind unsettled ratios (see
    ``Check.unsettled``) until none is left or ``most`` rounds ran. ``run_round(index, variants)`` runs round
    ``index`` of ``variants`` (None: all). Returns the number of rounds run."""
    for index in range(first):
        run_round(index, None)
    rounds = first
    while rounds < most:
        wide = {id(v): v for check in current_checks() if check.unsettled(tolerance) for v in check.variants}
        if not wide:
            break
        run_round(rounds, list(wide.values()))
        rounds += 1
    return rounds


def joint_report(pairs: list[tuple[JointVariant, JointVariant]], device: torch.device) -> list[str]:
    """The joint-training table: rows/s of one joint step against R separate steps, with peak memory."""
    lines = [
        f"### Joint training (P-tuning LAMA protocol: R LSTM-encoder adapters, batch {JOINT_BATCH} per relation)",
        "",
        f"One forward of {JOINT_BATCH}·R rows with per-row adapters, the summed per-adapter losses backpropagated and "
        f"every adapter's Adam step, against R steps of {JOINT_BATCH} rows with each adapter active in turn.",
        "",
        "| R | rows | joint step ms | min–max | R separate steps ms | min–max | joint rows/s | separate rows/s "
        "| joint / separate | interquartile range | joint peak MB | separate peak MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for joint, separate in pairs:
        samples = paired_ratios(separate, joint)
        first, third = quartiles(samples)
        lines.append(
            f"| {joint.relations} | {joint.facts} | {ms(joint.step)} | {spread(joint.times)} | {ms(separate.step)} "
            f"| {spread(separate.times)} | {joint.facts / joint.step:,.1f} | {separate.facts / separate.step:,.1f} "
            f"| {statistics.median(samples):.2f}× | {first:.2f}–{third:.2f}× | {mb(joint.peak)} | {mb(separate.peak)} |"
        )
    memory = "torch.cuda.max_memory_allocated above" if device.type == "cuda" else "tensor storages allocated beyond"
    lines += ["", f"Peak memory: {memory} the weights, the adapters and their Adam state, in the step after the "
              "warm-up (activations and gradients; separate: the largest of the R steps).", ""]
    return lines


def method_report(train: dict[str, Variant], evaluation: dict[str, Variant], gap: float,
                  args: argparse.Namespace) -> list[str]:
    """The train-step and scoring tables of one model."""
    floor, single, peft_pt = train[FLOOR], train[SINGLE], train[PEFT_PT]
    lines = [
        f"Floor and ours compute the same loss and scores (largest difference {gap:.1e}).",
        "",
        "### Train step (forward + backward + Adam step)",
        "",
        "| variant | step ms | min–max | collate ms | peak MB | / PEFT PROMPT_TUNING | / floor | / single | "
        "peak / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in train.items():
        collate = ms(statistics.median(v.collate_times)) if v.collate_times else "–"
        versus_single = ratio(v.step, single.step) if name.startswith("ours") else "–"
        lines.append(
            f"| {name} | {ms(v.step)} | {spread(v.times)} | {collate} | {mb(v.peak)} "
            f"| {ratio(v.step, peft_pt.step)} | {ratio(v.step, floor.step)} | {versus_single} "
            f"| {ratio(v.peak, floor.peak)} |"
        )
    lines += [
        "",
        f"### Scoring ({args.eval_batch} facts per batch, log-probabilities over the candidates, no gradients)",
        "",
        "| variant | batch ms | min–max | collate ms | facts/s | peak MB | throughput / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in evaluation.items():
        collate = ms(statistics.median(v.collate_times)) if v.collate_times else "–"
        lines.append(
            f"| {name} | {ms(v.step)} | {spread(v.times)} | {collate} | {v.facts / v.step:,.1f} | {mb(v.peak)} | "
            f"{ratio(evaluation[FLOOR].step, v.step)} |"
        )
    lines.append("")
    return lines


def render_report(families: list[Family], variants: list[Variant], gaps: dict[str, float], all_checks: list[Check],
                  args: argparse.Namespace, argv: list[str], device: torch.device, header: dict[str, str]) -> str:
    lines = [
        "# Speed and memory",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/speed.py', *argv])}`",
        "",
        f"Machine: {header['machine']}. Load average (1 min) at start {header['load_start']}, at end "
        f"{header['load_end']}; total run time {header['elapsed']}.",
        "",
        "Settings:",
        "",
        f"- device {device.type}; {CLOCK_TEXT[args.clock]}; {args.repeats} interleaved repetitions after one warm-up "
        f"pass, then up to {args.max_repeats} in all for the variants behind a ratio whose interquartile range "
        f"crosses its limit or exceeds {args.spread_tolerance:.0%} of its median ({header['rounds']} rounds ran); "
        "times are medians (min–max beside them); the tables divide median times, the targets and the joint "
        "comparison take the median of the per-round ratios, with their interquartile range;",
    ]
    if args.only != "joint":
        lines += [
            f"- train batch {args.batch} examples (mixture K: {args.batch}·K rows), rows of at most {args.seq_len} "
            f"tokens; scoring batch {args.eval_batch} facts over {len(families[0].candidates):,} candidate ids;",
            "- peak memory of the first step (the warm-up): "
            + ("torch.cuda.max_memory_allocated above what was allocated before it" if device.type == "cuda" else
               "tensor storages it allocates, counted by a TorchDispatchMode")
            + ": activations, gradients and Adam state, not the weights;",
            "- collate: building the batch from (subject, answer) strings with PromptCollator, not part of the step "
            "time;",
        ]
    if args.only != "methods":
        relations = ", ".join(str(r) for r in args.joint_relations)
        lines.append(f"- joint training: R = {relations} relations, {JOINT_BATCH} examples each, rows of at most "
                     f"{args.seq_len} tokens, answers scored over {len(families[0].candidates):,} candidate ids;")
    lines += [f"- memory allocator: {header['allocator']}.", ""]
    for family in families:
        train, evaluation = by_kind(variants, family.name)
        pairs = joint_pairs(variants, family.name)
        if not train and not pairs:
            continue
        lines += [f"## {family.title}", ""]
        if train:
            lines += method_report(train, evaluation, gaps[family.name], args)
        if pairs:
            lines += joint_report(pairs, device)
    lines += [
        "## Targets",
        "",
        "| target | model | measured | interquartile range | IQR / median | rounds | limit | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *[check.row() for check in all_checks],
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def relation_counts(text: str) -> list[int]:
    """``--joint-relations``: comma-separated numbers of relations (adapters), each >= 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(
            f"expected distinct numbers >= 1 separated by commas (e.g. 8,41), got {text!r}"
        )
    return counts


PARTS = ("all", "methods", "joint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="base", choices=("base", "small"))
    parser.add_argument("--model", default=None,
                        help="a local folder with a pretrained masked or causal LM to measure instead of the configs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--only", default="all", choices=PARTS,
                        help="methods: the train-step and scoring tables only; joint: the joint-training comparison "
                        "only (the masked LM, or --model)")
    parser.add_argument("--family", default=None, choices=FAMILIES, action="append",
                        help="measure only this built model (repeatable; default: every one); e.g. --family gpt2")
    parser.add_argument("--joint-relations", type=relation_counts, default=[8, 41],
                        help="numbers of relations R of the joint-training comparison (default 8,41)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repetitions of every variant")
    parser.add_argument("--max-repeats", type=positive_int, default=None,
                        help="most repetitions of the variants behind a ratio whose spread is wide (default 3x "
                        "--repeats)")
    parser.add_argument("--spread-tolerance", type=float, default=0.05,
                        help="a ratio's interquartile range over its median above which more repetitions run")
    parser.add_argument("--batch", type=positive_int, default=16, help="training examples per step")
    parser.add_argument("--seq-len", type=positive_int, default=32,
                        help="longest row of the single template, in tokens")
    parser.add_argument("--eval-batch", type=positive_int, default=32, help="facts per scoring batch")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="cpu: CPU time of this process, robust to other processes on a shared machine when "
                        "--threads 1 (CPU devices only)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 gives stable timings on a shared CPU")
    parser.add_argument("--allocator", default="retain", choices=("retain", "system"),
                        help="retain (CPU, glibc): freed memory is kept for reuse, as a caching allocator does; "
                        "system: glibc's defaults, which map and unmap every block over 32 MB (see docs/speed.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/speed",
                        help="folder of the markdown report (speed.md, or speed-<model folder>.md with --model), or "
                        "a .md file; benchmarks/results refreshes the published report")
    args = parser.parse_args(argv)
    if args.model is not None and not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: the folder does not exist; expected a local folder with a pretrained "
                     "masked or causal LM (config.json, weights, tokenizer files)")
    if args.max_repeats is None:
        args.max_repeats = 3 * args.repeats
    if args.max_repeats < args.repeats:
        parser.error(f"--max-repeats {args.max_repeats} is below --repeats {args.repeats}")
    if not 0 < args.spread_tolerance < 1:
        parser.error(f"--spread-tolerance must lie between 0 and 1, got {args.spread_tolerance}")
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU work; time GPU runs with --clock wall")
    return args


def report_path(out: str, model: str | None) -> Path:
    """The report file of ``--out``: the .md file itself, or ``speed.md`` / ``speed-<model folder>.md`` in a folder."""
    path = Path(out)
    if path.suffix == ".md":
        return path
    return path / (f"speed-{Path(model).name}.md" if model is not None else "speed.md")


def run_round(variants: list[Variant], index: int, device: torch.device, clock: Callable[[], float]) -> None:
    """Round ``index``: every variant once, in turn, starting at a position that rotates with the round."""
    shift = index % len(variants)
    for variant in variants[shift:] + variants[:shift]:
        variant.rounds[index] = variant.measure(device, clock)
        if variant.collate is not None:
            variant.collate_times.append(timed(variant.collate, device, clock))


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    allocator = "torch's CUDA caching allocator" if device.type == "cuda" else "system malloc defaults"
    if args.allocator == "retain" and device.type == "cpu":
        kept = retain_freed_memory()
        allocator = "malloc keeps freed memory (mallopt)" if kept else "system malloc defaults (mallopt unavailable)"
    started = time.perf_counter()
    load_start = f"{os.getloadavg()[0]:.1f}"
    if args.model is not None:
        names = [Path(args.model).name]
    else:
        names = list(FAMILIES[:1] if args.only == "joint" else args.family or FAMILIES)  # joint: the masked LM
    families = [build_family(name, args) for name in names]
    variants: list[Variant] = []
    gaps: dict[str, float] = {}
    if args.only in ("all", "methods"):
        with tempfile.TemporaryDirectory() as directory:
            generator = save_generator(args.model_size, Path(directory), args.seed)  # PromptGen's, for every family
            for family in families:
                train, evaluation, gaps[family.name] = build_variants(family, generator, device)
                variants += train + evaluation
    if args.only in ("all", "joint"):
        variants += build_joint_variants(families[0], args.joint_relations, device, args.seed)
    for variant in tqdm(variants, desc="warm-up and memory", leave=False):
        if isinstance(variant, JointVariant):
            variant.run()  # creates the Adam state: the peak is a step's activations and gradients
        variant.peak = peak_bytes(variant.run, device)
    clock = CLOCKS[args.clock]

    def all_checks() -> list[Check]:
        found = [check for family in families for check in checks(family.name, *by_kind(variants, family.name))]
        return found + joint_checks(families[0].name, variants, device)

    bar = tqdm(total=args.repeats, desc="repetitions", leave=False)

    def one_round(index: int, subset: list[Variant] | None) -> None:
        run_round(variants if subset is None else subset, index, device, clock)
        bar.update(1)

    rounds = settle(one_round, all_checks, args.repeats, args.max_repeats, args.spread_tolerance)
    bar.close()
    elapsed = time.perf_counter() - started
    header = {
        "machine": machine(device),
        "load_start": load_start,
        "load_end": f"{os.getloadavg()[0]:.1f}",
        "elapsed": f"{elapsed / 60:.1f} min" if elapsed >= 60 else f"{elapsed:.0f} s",
        "rounds": str(rounds),
        "allocator": allocator,
    }
    if device.type == "cuda":
        peak = mb(torch.cuda.max_memory_allocated(device))
        header["machine"] += f"; peak GPU memory allocated during the timed rounds {peak} MB"
    report = render_report(families, variants, gaps, all_checks(), args, argv, device, header)
    out = report_path(args.out, args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(report)
    print(f"report written to {out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
