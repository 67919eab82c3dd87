"""The LAMA harness's outputs: ``results.json`` (the summary), ``results.md`` (the paper-style table beside the
published numbers of the same setting), ``per_relation.csv`` and ``per_relation.png``.

The numbers come from ``prompt_adapters.metrics.lama.aggregate_runs`` over the run's relation records; without
matplotlib (the ``bench`` extra) the figure is skipped with a one-line note.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lama_methods import METHODS, is_manual_row, train_settings
from published import published

import prompt_adapters
from prompt_adapters.data import lama as lama_data
from prompt_adapters.metrics.lama import aggregate_runs, describe_kept
from prompt_adapters.run_dir import atomic_write_text
from prompt_adapters.training import describe_precision


def report(args: argparse.Namespace, all_records: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """The run's summary (``results.json``): protocol, versions, machine and the aggregated tables."""
    cap = args.mrr_cap or None
    try:
        tables = aggregate_runs(all_records, cap)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    seeds = tables["seeds"]
    return {
        "command": " ".join(sys.argv),
        "protocol": {
            "model": args.model, "method": args.method, "prompts": args.init, "prompt_form": args.prompt_form,
            "init_vectors": args.init_vectors,
            "data_dependent": args.data_dependent, "corpus": args.split, "candidates": args.candidates,
            "dedupe": not args.no_dedupe, "exclude_other_valid": args.exclude_other_valid, "mrr_cap": cap,
            "averaging": "macro (mean over relations) is the headline; micro pools facts",
            "max_train": args.max_train, "max_test": args.max_test, "em": args.em,
            "training": asdict(train_settings(args, seeds[0])) if METHODS[args.method].train else None,
            "seeds": seeds,
        },
        "versions": {"prompt_adapters": prompt_adapters.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "precision": args.precision,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads()},
        "elapsed_seconds": round(elapsed, 1),
        **{key: tables[key] for key in ("train_seconds", "headline", "dropped_facts", "kept_epochs",
                                        "skipped_relations", "per_seed")},
        "published": published(args.method, args.init, args.model, args.candidates),
        "written_prompts": {record["relation"]: record["written_prompts"] for record in all_records
                            if record["seed"] == seeds[0] and "written_prompts" in record},
    }


def write_outputs(out: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "results.md", markdown(summary))
    seed = summary["protocol"]["seeds"][0]
    per_rel = summary["per_seed"][str(seed)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["relation", "type", "n_test", "P@1", "P@10", "MRR", "init P@1", "manual P@1"])
    ordered = sorted((r for r in records if r["seed"] == seed and "skipped" not in r),
                     key=lambda r: lama_data.natural_key(r["relation"]))
    for record in ordered:
        rel = record["relation"]
        row = per_rel["ranks"]["per_relation"][rel]
        writer.writerow([rel, record["type"], row["n"], f"{100 * row['P@1']:.2f}", f"{100 * row['P@10']:.2f}",
                         f"{100 * row['MRR']:.2f}", f"{100 * per_rel['init_ranks']['per_relation'][rel]['P@1']:.2f}",
                         f"{100 * per_rel['manual_ranks']['per_relation'][rel]['P@1']:.2f}"])
    atomic_write_text(out / "per_relation.csv", buffer.getvalue())
    plot(out / "per_relation.png", summary, per_rel)


def markdown(summary: dict[str, Any]) -> str:
    p, h = summary["protocol"], summary["headline"]
    pub = summary["published"] or {}

    def cell(key: str) -> str:
        value = h[key]
        return f"{value['mean']:.1f}" + (f" ± {value['std']:.1f}" if len(p["seeds"]) > 1 else "")

    origin = "peft" if METHODS[p["method"]].native_peft else "ours"
    lines = [
        f"# LAMA: {p['method']} ({p['prompts']}) on {p['model']}",
        "",
        f"Command: `{summary['command']}`",
        "",
        "Protocol: " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "training"),
        "",
        f"Training: {p['training']}" if p["training"] else "Training: none (evaluation only)",
        "",
        "| row | P@1 | P@10 | MRR |",
        "| --- | --- | --- | --- |",
    ]
    for label, name in (("manual", "manual prompt (LAMA template)"), ("init", "before training (init)"),
                        ("method", f"{p['method']} ({origin})"), ("none", f"{p['method']}, subject replaced by None")):
        lines.append(f"| {name} | {cell(label + '.macro.P@1')} | {cell(label + '.macro.P@10')} | "
                     f"{cell(label + '.macro.MRR')} |")
    if pub:
        row = [pub.get(m) for m in ("P@1", "P@10", "MRR")]
        lines.append("| published | " + " | ".join("–" if v is None else f"{v:.1f}" for v in row) + " |")
        gap = [None if v is None else h[f"method.macro.{m}"]["mean"] - float(v)
               for v, m in zip(row, ("P@1", "P@10", "MRR"), strict=True)]
        lines.append("| gap (ours − published) | " + " | ".join("–" if g is None else f"{g:+.1f}" for g in gap) + " |")
        lines += ["", f"Published: {pub['source']}."]
    else:
        lines += ["", "No published number for exactly this setting (model, prompts, candidate set)."]
    lines += [
        "",
        f"Macro = mean over relations (headline). Micro P@1 = {cell('method.micro.P@1')}; "
        f"MRR without the rank cap = {cell('method.macro.MRR_uncapped')}.",
        "",
        "Per relation type (P@1, first seed): "
        + ", ".join(f"{t}: {100 * v['P@1']:.1f} ({v['n_relations']} rel.)"
                    for t, v in summary["per_seed"][str(p["seeds"][0])]["ranks"]["per_type"].items()),
        "",
        describe_kept(summary["kept_epochs"]) if "kept_epochs" in summary else "Kept epochs: not recorded.",
        "",
        "Dropped facts: " + json.dumps(summary["dropped_facts"]),
        "",
        "Skipped relations (not in the averages): "
        + (json.dumps(summary["skipped_relations"]) if summary["skipped_relations"] else "none"),
        "",
        describe_precision(summary["precision"]),
        "",
        f"Machine: {summary['machine']}; {summary['elapsed_seconds']} s in all, training "
        f"{summary['train_seconds']['mean']:.0f} s per seed (sum over relations).",
    ]
    if summary.get("written_prompts"):
        lines += ["", f"Prompts the kept generator writes (seed {p['seeds'][0]}, first test facts; the answer slot is "
                  "shown as the mask token, or `[Y]`):", ""]
        lines += [f"- {relation}, {fact['sub']} (answer {fact['obj']}): `[X] {fact['prompt']}`"
                  for relation, facts in sorted(summary["written_prompts"].items(),
                                                key=lambda item: lama_data.natural_key(item[0]))
                  for fact in facts]
    return "\n".join(lines) + "\n"


def per_relation_figure(summary: dict[str, Any], per_rel: dict[str, Any]) -> Any:
    """Bars of per-relation P@1: the manual prompt beside the method (one set when the method is the manual prompt)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    relations = sorted(per_rel["ranks"]["per_relation"], key=lama_data.natural_key)
    ours = [100 * per_rel["ranks"]["per_relation"][r]["P@1"] for r in relations]
    manual = [100 * per_rel["manual_ranks"]["per_relation"][r]["P@1"] for r in relations]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(relations) + 2), 4))
    x = range(len(relations))
    protocol = summary["protocol"]
    if is_manual_row(protocol["method"], protocol["prompts"]):
        ax.bar(list(x), manual, width=0.6, label="manual prompt", color="#9ca3af")
    else:
        ax.bar([i - 0.2 for i in x], manual, width=0.4, label="manual prompt", color="#9ca3af")
        ax.bar([i + 0.2 for i in x], ours, width=0.4, label=protocol["method"], color="#2563eb")
    ax.set_xticks(list(x), relations, rotation=90, fontsize=7)
    ax.set_ylabel("P@1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{protocol['model']}: per-relation P@1")
    ax.legend()
    fig.tight_layout()
    return fig


def plot(path: Path, summary: dict[str, Any], per_rel: dict[str, Any]) -> None:
    """Draw ``per_relation.png``; without matplotlib (the ``bench`` extra) say so in one line and draw nothing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{path.name} not drawn: matplotlib is not installed (pip install 'prompt-adapters[bench]'); the "
              "results are written", file=sys.stderr)
        return
    fig = per_relation_figure(summary, per_rel)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
