"""FactWorld: a synthetic world of facts, small LMs pretrained on it here, and LAMA-format probing data.

    python benchmarks/factworld.py build --out DIR [--size small|default] [--seed S]
    python benchmarks/factworld.py table --world DIR [--output runs/factworld/factworld.md]

``build`` writes DIR/world.json, DIR/corpus.txt, DIR/lama/ (LAMA layout), DIR/{bert,gpt2,bart}/ (model + tokenizer,
loadable with AutoModelForMaskedLM / AutoModelForCausalLM / AutoModelForSeq2SeqLM and AutoTokenizer) and
DIR/report.json, and prints the build times and the P@1 checks. ``table`` runs every prompt method through
benchmarks/lama.py on the world's test split and writes one row per method (into --output, by default under
runs/; ``--output benchmarks/results/factworld.md`` refreshes the published table). ``table`` needs the extra
``bench`` (pip install -e ".[bench]") for lama.py's figures. See docs/factworld.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from prompt_adapters.factworld import PORTABLE_KERNELS, SIZES, build_world, format_report
from prompt_adapters.run_dir import positive_int
from prompt_adapters.training import atomic_write_text

#: settings for the soft-prompt rows: the tiny models need a larger learning rate than BERT-base's 1e-3
SOFT = ("--lr", "1e-2", "--epochs", "30", "--patience", "6")
ENCODER = ("--lr", "1e-3", "--epochs", "40", "--patience", "8")
#: the one-layer FactWorld BART collapses into one repeated word at 1e-3 and barely moves at the paper's 5e-5
GENERATOR = ("--lr", "1e-4", "--epochs", "40", "--patience", "8")
#: (row, model folder of the world, benchmarks/lama.py arguments); every row runs lama.py on the same test split
TABLE_ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("manual prompt (masked LM)", "bert", ("--method", "manual")),
    ("soft prompt, K = 1, manual init", "bert", ("--method", "mixture", "--init", "manual", *SOFT)),
    ("mixture of mined prompts", "bert", ("--method", "mixture", "--init", "lpaqa_mined", *SOFT)),
    ("deep perturbation, manual init", "bert", ("--method", "deep", "--init", "manual", *SOFT)),
    ("P-tuning (masked LM)", "bert", ("--method", "ptuning", *ENCODER)),
    ("manual prompt (causal LM)", "gpt2", ("--method", "manual")),
    ("P-tuning (causal LM)", "gpt2", ("--method", "ptuning", *ENCODER)),
    ("PromptGen, alpha = 0.3", "bert", ("--method", "promptgen", "--generator", "{world}/bart", *GENERATOR)),
    ("PromptGen, alpha = 0", "bert",
     ("--method", "promptgen", "--generator", "{world}/bart", "--leak-penalty", "0", *GENERATOR)),
    ("P-tuning (masked LM), relations trained jointly", "bert", ("--method", "ptuning", *ENCODER, "--joint")),
    ("PromptGen, alpha = 0.3, stopping at answer words", "bert",
     ("--method", "promptgen", "--generator", "{world}/bart", "--stop-at-answers", *GENERATOR)),
    ("PromptGen, alpha = 0, stopping at answer words", "bert",
     ("--method", "promptgen", "--generator", "{world}/bart", "--leak-penalty", "0", "--stop-at-answers", *GENERATOR)),
)


def row_numbers(text: str) -> list[int]:
    """``--rows``: comma-separated row numbers of TABLE_ROWS (1-based)."""
    try:
        rows = [int(part) for part in text.split(",")]
    except ValueError:
        rows = []
    if not rows or not all(1 <= row <= len(TABLE_ROWS) for row in rows):
        raise argparse.ArgumentTypeError(f"expected row numbers from 1 to {len(TABLE_ROWS)} separated by commas "
                                         f"(e.g. 1,5), got {text!r}")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="generate the world and corpus, train tokenizers and models, measure")
    build.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    build.add_argument("--size", default="default", choices=sorted(SIZES), help="preset (small: ~5 min, 2 idle cores)")
    build.add_argument("--seed", default=0, type=int, help="world, corpus and training seed")
    table = commands.add_parser("table", help="one row per prompt method on the world's test split")
    table.add_argument("--world", required=True, type=Path, help="a directory written by `build`")
    table.add_argument("--output", type=Path, default=Path("runs/factworld/factworld.md"),
                       help="markdown table (benchmarks/results/factworld.md: the published one)")
    table.add_argument("--runs", type=Path, default=Path("runs/factworld"), help="lama.py output folders")
    table.add_argument("--seeds", type=positive_int, default=1)
    table.add_argument("--rows", type=row_numbers, default=None,
                       help=f"comma-separated row numbers (1 to {len(TABLE_ROWS)}) to run; default all")
    return parser.parse_args(argv)


def method_table(world: Path, output: Path, runs: Path, seeds: int = 1, rows: list[int] | None = None) -> str:
    """Run the TABLE_ROWS methods on ``world`` and write the markdown table (with every command) to ``output``."""
    import lama

    report = json.loads((world / "report.json").read_text())
    targets = report["targets"]
    lines = [
        f"# FactWorld: prompt methods on the test split of `{world}`",
        "",
        f"World: `python benchmarks/factworld.py build --out {world} --size {report['size']} --seed {report['seed']}` "
        f"({report['timings_s']['total']:.0f} s); masked LM memorisation P@1 {targets['memorisation']['value']:.3f} "
        f"(top corpus paraphrase, train split), manual-template P@1 {targets['manual']['value']:.3f} (test split).",
        "",
        "Macro P@1 / P@10 / MRR (%) over relations on held-out subjects (candidates: the world's objects); "
        "'None' = P@1 when the subject is replaced by \"None\" (label-leak diagnostic).",
        "",
        "| # | method | P@1 | P@10 | MRR | None P@1 | time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    commands = []
    for number, (label, folder, extra) in enumerate(TABLE_ROWS, start=1):
        if rows and number not in rows:
            continue
        argv = ["--model", str(world / folder), "--data-dir", str(world / "lama"), "--candidates",
                "common_vocab_cased", "--seeds", str(seeds), "--output", str(runs / f"row{number}"),
                *(arg.format(world=world) for arg in extra)]
        started = time.perf_counter()
        summary = lama.main(argv)
        head = summary["headline"]
        cells = [f"{head[f'method.macro.{m}']['mean']:.1f}" for m in ("P@1", "P@10", "MRR")]
        lines.append(f"| {number} | {label} | {' | '.join(cells)} | {head['none.macro.P@1']['mean']:.1f} | "
                     f"{time.perf_counter() - started:.0f} |")
        commands.append(f"{number}. `python benchmarks/lama.py {' '.join(argv)}`")
    lines += ["", "Produced by `python " + " ".join(sys.argv) + "`; the rows' commands:", "", *commands, "",
              f"Machine: {platform.platform()}, {torch.get_num_threads()} threads, torch {torch.__version__}, kernels "
              f"{torch.backends.cpu.get_cpu_capability()} with MKL_CBWR={os.environ.get('MKL_CBWR')}."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(output, text)
    return text


def rerun_under_portable_kernels(argv: list[str]) -> None:
    """Replace this process by the same command under ``PORTABLE_KERNELS`` unless it already runs under them.

    torch and MKL pick their kernels once per process, so the table's tuning runs get the build's CPU-independent
    arithmetic only in a process started with that environment.
    """
    if any(os.environ.get(name) != value for name, value in PORTABLE_KERNELS.items()):
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv],
                  {**os.environ, **PORTABLE_KERNELS})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "build":
        report = build_world(args.out, size=args.size, seed=args.seed)
        print(format_report(report))
    else:
        rerun_under_portable_kernels(sys.argv[1:] if argv is None else argv)
        print(method_table(args.world, args.output, args.runs, args.seeds, args.rows))


if __name__ == "__main__":
    main()
