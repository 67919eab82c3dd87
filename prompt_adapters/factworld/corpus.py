"""The pretraining corpus: every fact stated in several paraphrases with a Zipf-skewed template mix.

Each fact is stated once with its relation's rank-1 paraphrase (so memorisation can be measured on a
template every fact was seen with) and ``mentions - 1`` more times with distinct lower-ranked
paraphrases, rank r getting a share proportional to ``1 / r ** zipf``. Each subject also gets one
compound sentence stating two of its facts. The manual LAMA template is never used.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from prompt_adapters.factworld.world import COMPOUNDS, World


@dataclass(frozen=True)
class Sentence:
    """One corpus line as words, the template it was filled from, and where its objects are.

    ``objects`` holds ``(word index, relation)`` pairs; every object is exactly one word.
    """

    words: tuple[str, ...]
    template: str
    objects: tuple[tuple[int, str], ...]

    @property
    def text(self) -> str:
        """The line as written to corpus.txt."""
        return " ".join(self.words)


def fill(template: str, subject: str, objects: dict[str, str], relation: str | None = None) -> Sentence:
    """Fill ``[X]`` with the subject and ``[Y]`` (for ``relation``) or ``[P..]`` slots with objects."""
    words: list[str] = []
    slots: list[tuple[int, str]] = []
    for token in template.split():
        if token == "[X]":
            words.extend(subject.split())
        elif token.startswith("[") and token.endswith("]") and len(token) > 2:
            slot = relation if token == "[Y]" else token[1:-1]
            if slot is None or slot not in objects:
                raise ValueError(f"template {template!r} has slot {token!r} but objects are {sorted(objects)}")
            slots.append((len(words), slot))
            words.append(objects[slot])
        else:
            words.append(token)
    return Sentence(tuple(words), template, tuple(slots))


def zipf_counts(total: int, ranks: int, zipf: float, cap: int) -> list[int]:
    """Split ``total`` mentions over ``ranks`` templates in proportion to ``1 / (rank + 1) ** zipf``.

    Largest-remainder rounding, and no template gets more than ``cap`` (the number of facts, since a
    fact uses a template at most once); what a capped template cannot take goes to the next ranks.
    """
    if total > ranks * cap:
        raise ValueError(f"{total} mentions do not fit {ranks} templates used at most {cap} times each")
    counts = [0] * ranks
    open_ranks = list(range(ranks))
    remaining = total
    while remaining:
        weights = {r: 1.0 / (r + 2) ** zipf for r in open_ranks}
        shares = {r: remaining * w / sum(weights.values()) for r, w in weights.items()}
        add = {r: int(shares[r]) for r in open_ranks}
        for r in sorted(open_ranks, key=lambda r: (add[r] - shares[r], r))[: remaining - sum(add.values())]:
            add[r] += 1
        for r in open_ranks:
            counts[r] += add[r]
        remaining = sum(max(0, c - cap) for c in counts)
        counts = [min(c, cap) for c in counts]
        open_ranks = [r for r in open_ranks if counts[r] < cap]
    return counts


def generate_corpus(world: World, mentions: int = 3, zipf: float = 1.0, seed: int = 0) -> list[Sentence]:
    """All corpus sentences, shuffled with ``seed``.

    Per relation, every fact gets the rank-1 paraphrase once, and the other ``mentions - 1`` mentions
    per fact are split exactly by :func:`zipf_counts` over ranks 2..K, each fact getting distinct ones.
    """
    rng = random.Random(f"factworld-corpus-{seed}")
    sentences: list[Sentence] = []
    for spec in world.relations:
        facts = list(world.facts[spec.relation])
        if not 1 <= mentions <= len(spec.paraphrases):
            raise ValueError(f"mentions={mentions} must be between 1 and the {len(spec.paraphrases)} paraphrases")
        counts = zipf_counts((mentions - 1) * len(facts), len(spec.paraphrases) - 1, zipf, len(facts))
        # Slot i goes to fact i mod n; a run of one rank is at most n long, so no fact repeats a template.
        slots = [rank + 1 for rank, count in enumerate(counts) for _ in range(count)]
        rng.shuffle(facts)
        ranks_of: list[list[int]] = [[0] for _ in facts]
        for i, rank in enumerate(slots):
            ranks_of[i % len(facts)].append(rank)
        for fact, ranks in zip(facts, ranks_of, strict=True):
            for rank in ranks:
                sentences.append(fill(spec.paraphrases[rank], fact["sub"], {spec.relation: fact["obj"]}, spec.relation))
    objects_of: dict[str, dict[str, str]] = defaultdict(dict)
    subject_type = {spec.relation: spec.subject_type for spec in world.relations}
    for spec in world.relations:
        for fact in world.facts[spec.relation]:
            objects_of[fact["sub"]][spec.relation] = fact["obj"]
    for stype in sorted(set(subject_type.values())):
        compounds = [
            c for c in COMPOUNDS if all(subject_type.get(t[1:-1]) == stype for t in c.split() if t.startswith("[P"))
        ]
        if not compounds:
            continue
        for subject in world.entities[stype]:
            sentences.append(fill(rng.choice(compounds), subject, objects_of[subject]))
    rng.shuffle(sentences)
    return sentences


def template_frequencies(world: World, sentences: list[Sentence]) -> dict[str, list[tuple[str, float]]]:
    """Share of each relation's single-fact sentences that use each paraphrase, in paraphrase order."""
    counts = Counter(s.template for s in sentences)
    result: dict[str, list[tuple[str, float]]] = {}
    for spec in world.relations:
        total = sum(counts[t] for t in spec.paraphrases)
        result[spec.relation] = [(t, counts[t] / total) for t in spec.paraphrases]
    return result


def mine_prompts(world: World, lines: list[str], top_k: int = 10) -> dict[str, list[tuple[str, float]]]:
    """LPAQA-style middle-word prompts mined from corpus text, with relative frequencies.

    For every line and every fact of the line's subject whose object occurs in the line, the words
    between subject and object become a template ``[X] ... [Y] .`` (or ``[Y] ... [X] .``). This
    mirrors LPAQA's mined prompts, including their noise (a coincidentally shared object, or another
    fact's object sitting between [X] and [Y]). Keeps the ``top_k`` most frequent per relation.
    """
    facts_of: dict[tuple[str, ...], list[tuple[str, str]]] = defaultdict(list)
    for spec in world.relations:
        for fact in world.facts[spec.relation]:
            facts_of[tuple(fact["sub"].split())].append((spec.relation, fact["obj"]))
    lengths = sorted({len(k) for k in facts_of}, reverse=True)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        words = line.split()
        span = next(
            ((i, i + n) for n in lengths for i in range(len(words) - n + 1) if tuple(words[i : i + n]) in facts_of),
            None,
        )
        if span is None:
            continue
        start, end = span
        for relation, obj in facts_of[tuple(words[start:end])]:
            for j, word in enumerate(words):
                if word != obj:
                    continue
                if j >= end:
                    template = " ".join(["[X]", *words[end:j], "[Y]", "."])
                else:
                    template = " ".join(["[Y]", *words[j + 1 : start], "[X]", "."])
                counts[relation][template] += 1
    mined: dict[str, list[tuple[str, float]]] = {}
    for spec in world.relations:
        top = sorted(counts[spec.relation].items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        total = sum(c for _, c in top)
        mined[spec.relation] = [(t, c / total) for t, c in top]
    return mined
