"""FactWorld: a synthetic world of facts, small LMs pretrained on it here, and LAMA-format probing data.

    python benchmarks/factworld.py build --out DIR [--size small|default] [--seed S]

writes DIR/world.json, DIR/corpus.txt, DIR/lama/ (LAMA layout), DIR/{bert,gpt2,bart}/ (model + tokenizer,
loadable with AutoModelForMaskedLM / AutoModelForCausalLM / AutoModelForSeq2SeqLM and AutoTokenizer) and
DIR/report.json, and prints the build times and the P@1 checks. See docs/factworld.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prompt_adapters.factworld import SIZES, build_world, format_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="generate the world and corpus, train tokenizers and models, measure")
    build.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    build.add_argument("--size", default="default", choices=sorted(SIZES), help="preset (small: ~1-3 min, for tests)")
    build.add_argument("--seed", default=0, type=int, help="world, corpus and training seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "build":
        report = build_world(args.out, size=args.size, seed=args.seed)
        print(format_report(report))


if __name__ == "__main__":
    main()
