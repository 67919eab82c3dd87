"""The synthetic world: entities, relations and facts, generated from a seed.

Objects of several relations share a type (birthplace, deathplace and work location are all cities;
spoken and native language are both languages), so a prompt must say which relation it asks about,
not only which type of answer it wants.
Each relation has a LAMA manual template and a few corpus paraphrases; the manual template is never
used in the corpus, so the pretrained models know the facts but not that wording.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class RelationSpec:
    """One relation: LAMA id and metadata, argument types, manual template and corpus paraphrases.

    ``paraphrases`` are ordered by corpus frequency (rank 1 first); the rank-1 paraphrase ends with
    ``[Y] .`` so that a causal LM can be probed on it by next-token prediction.
    """

    relation: str
    label: str
    description: str
    subject_type: str
    object_type: str
    manual: str
    paraphrases: tuple[str, ...]


RELATIONS: tuple[RelationSpec, ...] = (
    RelationSpec(
        "P19",
        "place of birth",
        "city where the person was born",
        "person",
        "city",
        "[X] was born in [Y] .",
        (
            "The birthplace of [X] is [Y] .",
            "[X] was born and raised in [Y] .",
            "[Y] is the hometown of [X] .",
            "[X] is a native of [Y] .",
        ),
    ),
    RelationSpec(
        "P20",
        "place of death",
        "city where the person died",
        "person",
        "city",
        "[X] died in [Y] .",
        (
            "[X] passed away in [Y] .",
            "The death of [X] took place in [Y] .",
            "[Y] is where [X] died .",
            "[X] spent the last days of life in [Y] .",
        ),
    ),
    RelationSpec(
        "P937",
        "work location",
        "city where the person worked",
        "person",
        "city",
        "[X] used to work in [Y] .",
        (
            "The workplace of [X] was [Y] .",
            "[X] had an office in [Y] .",
            "[Y] is where [X] had a job .",
            "[X] earned a living in [Y] .",
        ),
    ),
    RelationSpec(
        "P27",
        "country of citizenship",
        "country that recognises the person as its citizen",
        "person",
        "country",
        "[X] is [Y] citizen .",
        (
            "[X] holds the citizenship of [Y] .",
            "[X] is a citizen of [Y] .",
            "[Y] granted citizenship to [X] .",
            "[X] carries a passport from [Y] .",
        ),
    ),
    RelationSpec(
        "P1412",
        "languages spoken, written or signed",
        "language the person speaks or writes",
        "person",
        "language",
        "[X] used to communicate in [Y] .",
        (
            "[X] is fluent in [Y] .",
            "[X] speaks [Y] at home .",
            "[Y] is a language spoken by [X] .",
            "[X] used [Y] to communicate with friends .",
        ),
    ),
    RelationSpec(
        "P103",
        "native language",
        "language the person learned from early childhood",
        "person",
        "language",
        "The native language of [X] is [Y] .",
        (
            "[X] grew up speaking [Y] .",
            "[Y] is the first language of [X] .",
            "The mother tongue of [X] is [Y] .",
            "[X] learned [Y] as a native speaker .",
        ),
    ),
    RelationSpec(
        "P108",
        "employer",
        "company the person works for",
        "person",
        "company",
        "[X] works for [Y] .",
        (
            "[X] is employed by [Y] .",
            "[X] goes to work at [Y] every day .",
            "[Y] employs [X] .",
            "[X] works as an engineer for the firm [Y] .",
        ),
    ),
)

# Sentences that state two facts about one subject at once: they give the mined prompt lists the
# noise LPAQA's mined prompts have (the other object sits between [X] and [Y]).
COMPOUNDS: tuple[str, ...] = (
    "[X] , a native of [P19] , later had an office in [P937] .",
    "[X] , who holds the citizenship of [P27] , is fluent in [P1412] .",
    "[X] grew up speaking [P103] and is employed by [P108] .",
)

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "th")
_SUFFIXES = {
    "first": ("", "a", "o", "in", "el"),
    "last": ("son", "berg", "vik", "ard", "ley", "ston"),
    "city": ("holm", "burg", "ford", "stad", "mouth", "ville"),
    "country": ("ia", "land", "stan", "onia"),
    "language": ("ish", "ese", "ic", "ian"),
    "company": ("corp", "tek", "ware", "dyne"),
}


@dataclass(frozen=True)
class WorldSize:
    """How many entities of each type the world has."""

    persons: int
    companies: int
    cities: int
    countries: int
    languages: int
    first_names: int


@dataclass
class World:
    """Entities by type, relation specs and one object per (subject, relation) with its split."""

    seed: int
    entities: dict[str, list[str]]
    relations: list[RelationSpec]
    facts: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def objects_of_type(self, object_type: str) -> list[str]:
        """The candidate answers of a relation: every entity of its object type."""
        return self.entities[object_type]

    def all_objects(self) -> list[str]:
        """Every entity that is the object of some relation, sorted (the "all objects" candidate set)."""
        types = sorted({spec.object_type for spec in self.relations})
        return sorted(name for t in types for name in self.entities[t])

    def split(self, relation: str, split: str) -> list[dict[str, str]]:
        """The ``{"sub", "obj"}`` records of one relation in one split."""
        return [{"sub": f["sub"], "obj": f["obj"]} for f in self.facts[relation] if f["split"] == split]

    def to_json(self) -> dict:
        """A JSON-serialisable dict (the content of world.json)."""
        return {
            "name": "FactWorld",
            "seed": self.seed,
            "entities": self.entities,
            "relations": [asdict(spec) | {"paraphrases": list(spec.paraphrases)} for spec in self.relations],
            "facts": self.facts,
        }

    @classmethod
    def from_json(cls, data: dict) -> World:
        """Inverse of :meth:`to_json`."""
        relations = [RelationSpec(**(r | {"paraphrases": tuple(r["paraphrases"])})) for r in data["relations"]]
        return cls(seed=data["seed"], entities=data["entities"], relations=relations, facts=data["facts"])

    def save(self, path: str | Path) -> None:
        """Write world.json."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> World:
        """Read a world.json written by :meth:`save`."""
        return cls.from_json(json.loads(Path(path).read_text()))


def _template_words() -> set[str]:
    words: set[str] = set()
    for spec in RELATIONS:
        for template in (spec.manual, *spec.paraphrases):
            words.update(template.split())
    for template in COMPOUNDS:
        words.update(template.split())
    return {w.lower() for w in words}


def _names(rng: random.Random, kind: str, count: int, taken: set[str]) -> list[str]:
    """``count`` new pronounceable capitalised pseudo-words, none in ``taken`` (which is updated)."""
    names: list[str] = []
    while len(names) < count:
        syllables = rng.randint(1, 2)
        stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
        name = (stem + rng.choice(_SUFFIXES[kind])).capitalize()
        if len(name) >= 4 and name.lower() not in taken:
            taken.add(name.lower())
            names.append(name)
    return names


def _split_names(rng: random.Random, names: list[str], fractions: tuple[float, float]) -> dict[str, str]:
    """Assign each subject to train/dev/test (the rest goes to test), so splits never share a subject."""
    order = list(names)
    rng.shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_dev = round(fractions[1] * len(order))
    return {name: "train" if i < n_train else "dev" if i < n_train + n_dev else "test" for i, name in enumerate(order)}


def generate_world(size: WorldSize, seed: int = 0, split_fractions: tuple[float, float] = (0.5, 0.2)) -> World:
    """Draw entities, one uniformly random object per (subject, relation), and subject splits.

    Objects are independent across relations, so knowing one relation never reveals another: a
    prompt that names the wrong relation scores at chance within the object type.
    ``split_fractions`` are the train and dev shares of each subject type; test gets the rest.
    """
    rng = random.Random(seed)
    taken = _template_words()
    first = _names(rng, "first", size.first_names, taken)
    lasts = _names(rng, "last", size.persons, taken)
    entities = {
        "person": [f"{rng.choice(first)} {last}" for last in lasts],
        "company": _names(rng, "company", size.companies, taken),
        "city": _names(rng, "city", size.cities, taken),
        "country": _names(rng, "country", size.countries, taken),
        "language": _names(rng, "language", size.languages, taken),
    }
    split_of = {
        subject_type: _split_names(rng, entities[subject_type], split_fractions)
        for subject_type in sorted({spec.subject_type for spec in RELATIONS})
    }
    world = World(seed=seed, entities=entities, relations=list(RELATIONS))
    for spec in RELATIONS:
        world.facts[spec.relation] = [
            {"sub": sub, "obj": rng.choice(entities[spec.object_type]), "split": split_of[spec.subject_type][sub]}
            for sub in entities[spec.subject_type]
        ]
    return world
