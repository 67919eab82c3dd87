"""Write the world as LAMA-format probing data, in the layout of the LAMA data folder (docs/lama-data-and-metrics.md).

Layout under ``<out>/lama``::

    relations.jsonl                          relation, template (manual), label, description, type
    trex/autoprompt_original_subobj/<P>/{train,dev,test}.jsonl
                                             {"sub", "obj"}; splits never share a subject
    prompts/lpaqa_paraphrase/<P>.jsonl       {"template", "weight"}: the corpus paraphrases, weight = corpus share
    prompts/lpaqa_mined/<P>.jsonl            {"template", "weight"}: middle-word prompts mined from corpus.txt
    prompts/lpaqa_top1/LPAQA_relations.jsonl {"relation", "template"}: the most frequent corpus paraphrase
    prompts/qin_eisner/trex/<P>.jsonl        {"template"}: the manual template
    vocab/common_vocab_cased.txt             every object, one per line (the candidate set "all")
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from prompt_adapters.factworld.world import SPLITS, World

# The folder prompt_adapters.data.lama reads for its default "autoprompt" corpus, so the LAMA harness runs on a
# FactWorld with --data-dir DIR/lama and no FactWorld-specific option.
FACTS_DIR = "trex/autoprompt_original_subobj"


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def relation_type(world: World, relation: str) -> str:
    """LAMA cardinality label measured on the world: 1-1, N-1 (one object per subject) or N-M."""
    facts = world.facts[relation]
    per_subject = Counter(f["sub"] for f in facts)
    per_object = Counter(f["obj"] for f in facts)
    if max(per_subject.values()) > 1:
        return "N-M"
    return "1-1" if max(per_object.values()) == 1 else "N-1"


def write_lama(
    world: World,
    out_dir: str | Path,
    paraphrase_weights: dict[str, list[tuple[str, float]]],
    mined: dict[str, list[tuple[str, float]]],
) -> dict[str, int]:
    """Write the LAMA files under ``out_dir`` (the ``lama`` folder); return record counts per split."""
    root = Path(out_dir)
    _write_jsonl(
        root / "relations.jsonl",
        [
            {
                "relation": spec.relation,
                "template": spec.manual,
                "label": spec.label,
                "description": spec.description,
                "type": relation_type(world, spec.relation),
            }
            for spec in world.relations
        ],
    )
    counts = dict.fromkeys(SPLITS, 0)
    for spec in world.relations:
        for split in SPLITS:
            records = world.split(spec.relation, split)
            counts[split] += len(records)
            _write_jsonl(root / FACTS_DIR / spec.relation / f"{split}.jsonl", records)
        prompts = root / "prompts"
        _write_jsonl(
            prompts / "lpaqa_paraphrase" / f"{spec.relation}.jsonl",
            [{"template": t, "weight": w} for t, w in paraphrase_weights[spec.relation]],
        )
        _write_jsonl(
            prompts / "lpaqa_mined" / f"{spec.relation}.jsonl",
            [{"template": t, "weight": w} for t, w in mined[spec.relation]],
        )
        _write_jsonl(prompts / "qin_eisner" / "trex" / f"{spec.relation}.jsonl", [{"template": spec.manual}])
    _write_jsonl(
        root / "prompts" / "lpaqa_top1" / "LPAQA_relations.jsonl",
        [{"relation": spec.relation, "template": spec.paraphrases[0]} for spec in world.relations],
    )
    vocab = root / "vocab" / "common_vocab_cased.txt"
    vocab.parent.mkdir(parents=True, exist_ok=True)
    vocab.write_text("".join(name + "\n" for name in world.all_objects()))
    return counts
