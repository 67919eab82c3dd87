"""LAMA knowledge probing: tune (or just evaluate) a prompt method per relation and report the paper-style table.

    accelerate launch benchmarks/lama.py --model bert-base-cased --method mixture --init lpaqa_mined \
        --data-dir DATA/lama --split autoprompt --candidates common_vocab_cased --output runs/mix-mined

Relations are independent jobs spread over the accelerate processes (relation i goes to process i mod n; each is
seeded from (seed, relation), so results do not depend on the number of processes). Every finished relation is
written to ``OUTPUT/relations/<rel>.json`` and every epoch to ``OUTPUT/checkpoints/``, atomically, so ``--resume``
skips finished relations and continues a partly trained one. The main process then writes ``results.json``,
``results.md`` (with the published numbers of the same setting), ``per_relation.csv`` and ``per_relation.png``.
--output must be a new or empty folder (or a run to --resume).

The benchmarks need the extra ``bench`` (pip install -e ".[bench]"): without matplotlib the figure is skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from peft import get_peft_model
from tqdm.auto import tqdm
from transformers import AutoTokenizer
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peft_baselines
from published import published

import prompt_adapters
from prompt_adapters import (
    DeepPerturbConfig,
    MixturePromptConfig,
    PromptCollator,
    PromptGenCollator,
    PromptGenConfig,
    PTuningEncoderConfig,
)
from prompt_adapters.data import lama as lama_data
from prompt_adapters.data.lama import screen_facts
from prompt_adapters.methods.promptgen.config import LEAK_FORMS, STOPPING, TOKEN_FORMS
from prompt_adapters.methods.promptgen.model import PromptGenLayer
from prompt_adapters.methods.promptgen.warmup import warm_up
from prompt_adapters.metrics.lama import LamaRanking, other_valid_mask
from prompt_adapters.models import load_language_model
from prompt_adapters.run_dir import (
    ResumeMismatchError,
    check_manifest,
    check_model_source,
    digest,
    model_digest,
    non_negative_int,
    positive_int,
    read_record,
    refuse_used_output,
    remove_stale_temporaries,
    run_locked,
)
from prompt_adapters.sharding import shard_base_model
from prompt_adapters.training import (
    FitResult,
    JointTask,
    TrainSettings,
    atomic_write_text,
    describe_precision,
    fit,
    fit_joint,
    mixed_precision_used,
    precision_at_1,
    rank_answers,
)
from prompt_adapters.tuner import detect_lm_kind


@dataclass(frozen=True)
class Method:
    """How one --method builds its adapter config and whether (and with which defaults) it is trained."""

    build: Callable[[list[str], argparse.Namespace], Any]
    train: bool
    defaults: TrainSettings
    pooled: bool = False  # one adapter trained on every relation's facts together (PromptGen)
    native_peft: bool = False
    prefix_form: bool = False  # builds its prompt in --prompt-form prefix too


#: --prompt-form: "rewrite" tunes the prompt's own words (Qin & Eisner; P-tuning's word-free template); "prefix"
#: keeps the prompt's words as real tokens and tunes soft tokens put in front of it (what peft's prompt methods read)
PROMPT_FORMS = ("rewrite", "prefix")


def subject_before_answer(template: str) -> bool:
    """Whether the subject slot [X] comes before the answer slot [Y]: all a causal LM reads is the text before [Y]."""
    subject, answer = template.find("[X]"), template.find("[Y]")
    return 0 <= subject < answer


def soft_prefix_template(template: str) -> str:
    """The template with a soft copy of its own words in front: ``[soft: was born in .][X] was born in [Y] .``.

    Read with ``words="hard"``, the original words stay real tokens and only the copy is tuned, initialised from
    the words' embeddings: token for token the input peft's PROMPT_TUNING with text init reads (the copy is glued
    to the prompt, so the prompt's first piece is tokenised as the start of a text, as peft tokenises it).
    """
    words = peft_baselines.template_words(template)
    if not words:
        raise SystemExit(f"--prompt-form prefix needs a template with words to copy, got {template!r}")
    return f"[soft: {words}]{template}"


def _soft_prompts(templates: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Config fields of the mixture-style methods: their templates and word mode in the chosen --prompt-form."""
    common = {"init": args.init_vectors, "data_dependent": args.data_dependent}
    if args.prompt_form == "prefix":
        return {**common, "templates": [soft_prefix_template(t) for t in templates], "words": "hard"}
    return {**common, "templates": templates}


def _mixture(templates: list[str], args: argparse.Namespace) -> MixturePromptConfig:
    return MixturePromptConfig(**_soft_prompts(templates, args))


def _deep(templates: list[str], args: argparse.Namespace) -> DeepPerturbConfig:
    return DeepPerturbConfig(**_soft_prompts(templates, args))


def _manual(templates: list[str], args: argparse.Namespace) -> MixturePromptConfig:
    return MixturePromptConfig(templates=templates, words="hard", learn_weights=False)


#: the P-tuning paper's LAMA templates: (3, sub, 3, obj, 3) for masked LMs, (3, sub, 3) + next token for causal LMs
PTUNING_TEMPLATES = {"causal": "[P*3] [X] [P*3] [Y]", "masked": "[P*3] [X] [P*3] [Y] [P*3]"}


#: pseudo tokens in front of the manual prompt for --prompt-form prefix and peft's P_TUNING row: as many as the
#: paper's causal template has (6)
PTUNING_PREFIX_TOKENS = PTUNING_TEMPLATES["causal"].count("[P*3]") * 3


def _ptuning(templates: list[str], args: argparse.Namespace) -> PTuningEncoderConfig:
    if args.prompt_form == "prefix":
        return PTuningEncoderConfig(templates=[f"[P*{PTUNING_PREFIX_TOKENS}]{t}" for t in templates],
                                    encoder=args.encoder)
    template = PTUNING_TEMPLATES["causal" if args.lm_kind == "causal" else "masked"]
    return PTuningEncoderConfig(templates=[template], encoder=args.encoder)


def _peft_prompt_tuning(templates: list[str], args: argparse.Namespace) -> Any:
    """peft's PROMPT_TUNING, text init from the manual prompt (see peft_baselines)."""
    return peft_baselines.prompt_tuning_config(templates[0], args.tokenizer, args.model)


def _peft_p_tuning(templates: list[str], args: argparse.Namespace) -> Any:
    """peft's P_TUNING with as many virtual tokens as our causal P-tuning template has pseudo tokens."""
    return peft_baselines.p_tuning_config(PTUNING_PREFIX_TOKENS, args.encoder, args.embed_size)


QIN_EISNER = TrainSettings(epochs=16, learning_rate=1e-3, batch_size=32, patience=4, seed=42)
#: P-tuning LAMA code: Adam 1e-5 with coupled weight decay 5e-4, decay 0.98 per epoch, batch 8, <= 100 epochs,
#: stop after 20 epochs without improvement, seed 34, dropout on in the frozen LM
P_TUNING = TrainSettings(
    epochs=100, learning_rate=1e-5, batch_size=8, weight_decay=5e-4, lr_decay=0.98, patience=19, seed=34, dropout=True,
    improve_on_tie=True,
)

#: PromptGen paper (A.1): Adam lr 5e-5, warm-up ratio 0.1, weight decay 1e-3; epochs and batch are not stated
PROMPTGEN = TrainSettings(
    epochs=10, learning_rate=5e-5, batch_size=16, optimizer="adamw", weight_decay=1e-3, schedule="linear",
    warmup_ratio=0.1, patience=3, seed=42,
)


def _promptgen(templates: list[str], args: argparse.Namespace) -> PromptGenConfig:
    return PromptGenConfig(generator_name_or_path=args.generator, leak_penalty=args.leak_penalty,
                           leak_form=args.leak_form, token_form=args.token_form, stopping=args.stopping,
                           num_before=args.num_before, num_after=args.num_after, trained_length=args.trained_length,
                           generator_lora_rank=args.generator_lora_rank)


def pooled_config(method: Method, args: argparse.Namespace, train: list[dict[str, str]]) -> Any:
    """The config of a method trained on every relation's facts together; with ``--stop-at-answers`` (PromptGen),
    the objects of the training facts end the segment before the answer slot."""
    config = method.build([], args)
    if args.answer_words_per_relation and not args.stop_at_answers:
        raise ValueError("--answer-words-per-relation chooses which answer words end a prompt; add --stop-at-answers")
    if args.stop_at_answers and args.answer_words_per_relation:  # keyed by the relation's manual template
        by_relation: dict[str, set[str]] = {}
        for fact in train:
            by_relation.setdefault(fact["template"], set()).add(fact["obj"])
        config = replace(config, relation_answer_words={key: sorted(words) for key, words in by_relation.items()})
    elif args.stop_at_answers:
        config = replace(config, answer_words=sorted({fact["obj"] for fact in train}))
    return config


#: --method name -> Method; a new method is one entry here
METHODS: dict[str, Method] = {
    "manual": Method(_manual, train=False, defaults=QIN_EISNER),
    "mixture": Method(_mixture, train=True, defaults=QIN_EISNER, prefix_form=True),
    "deep": Method(_deep, train=True, defaults=QIN_EISNER, prefix_form=True),
    "ptuning": Method(_ptuning, train=True, defaults=P_TUNING, prefix_form=True),
    "promptgen": Method(_promptgen, train=True, defaults=PROMPTGEN, pooled=True),
    "peft_prompt_tuning": Method(_peft_prompt_tuning, train=True, defaults=QIN_EISNER, native_peft=True),
    "peft_p_tuning": Method(_peft_p_tuning, train=True, defaults=P_TUNING, native_peft=True),
}
NONE = "None"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert-base-cased", help="Hub id or local directory")
    parser.add_argument("--method", default="manual", choices=sorted(METHODS))
    parser.add_argument("--init", default="manual", help="prompt list the templates come from (a load_prompts kind)")
    parser.add_argument("--init-vectors", default="words", choices=("words", "random", "vocab"))
    parser.add_argument("--data-dependent", action="store_true", help="per-example mixture weights")
    parser.add_argument("--prompt-form", default="rewrite", choices=PROMPT_FORMS,
                        help="rewrite: tune the prompt's own words (the papers' setting); prefix: keep the words as "
                        "real tokens and tune soft tokens in front of them, as peft's prompt methods do "
                        "(mixture, deep, ptuning)")
    parser.add_argument("--encoder", default="lstm", choices=("lstm", "mlp", "none"), help="P-tuning encoder")
    parser.add_argument("--generator", default="facebook/bart-large", help="PromptGen generator (Hub id or dir)")
    parser.add_argument("--leak-penalty", type=float, default=0.3, help="PromptGen alpha")
    parser.add_argument("--leak-form", default="paper", choices=LEAK_FORMS)
    parser.add_argument("--token-form", default="soft", choices=TOKEN_FORMS,
                        help="PromptGen: read each written token as the expectation of the embeddings (soft, the "
                        "paper's) or as its most likely word with the expectation's gradient (docs/promptgen.md)")
    parser.add_argument("--stopping", default="mask", choices=STOPPING,
                        help="PromptGen stopping rule (docs/promptgen.md)")
    parser.add_argument("--stop-at-answers", action="store_true",
                        help="PromptGen: the segment before the answer slot also ends where the generator's most "
                        "likely next word is an object of the training facts (answer_words, docs/promptgen.md)")
    parser.add_argument("--answer-words-per-relation", action="store_true",
                        help="PromptGen with --stop-at-answers: each relation's segment ends at its own training "
                        "objects, not at every relation's (relation_answer_words)")
    parser.add_argument("--trained-length", action="store_true",
                        help="PromptGen: train the length of the segment before the answer slot (trained_length)")
    parser.add_argument("--generator-lora-rank", type=non_negative_int, default=0,
                        help="PromptGen: train the generator through LoRA adapters of this rank (0: all of it)")
    parser.add_argument("--warm-up-epochs", type=non_negative_int, default=0,
                        help="PromptGen: epochs of supervised warm-up (the generator learns to write the relation's "
                        "prompts for the training facts) before the end-to-end training; 0: none")
    parser.add_argument("--warm-up-prompts", default="manual",
                        help="PromptGen warm-up targets: comma-separated prompt kinds (load_prompts), e.g. "
                        "manual,pararel")
    parser.add_argument("--warm-up-lr", type=float, default=1e-3, help="PromptGen warm-up learning rate")
    parser.add_argument("--num-before", type=non_negative_int, default=10,
                        help="PromptGen: most soft tokens before the answer slot (the paper's m = 10)")
    parser.add_argument("--num-after", type=non_negative_int, default=5,
                        help="PromptGen: most soft tokens after the answer slot (the paper's n = 5)")
    parser.add_argument("--data-dir", default=str(lama_data.default_lama_dir()),
                        help="LAMA data folder (default: where --download puts it; docs/lama-data-and-metrics.md)")
    parser.add_argument("--split", default="autoprompt", help="fact corpus: " + ", ".join(lama_data.CORPORA))
    parser.add_argument("--candidates", default="common_vocab_cased", choices=sorted(lama_data.CANDIDATE_SETS))
    parser.add_argument("--relations", default=None, help="comma-separated relation ids (default: all with data)")
    parser.add_argument("--no-dedupe", action="store_true", help="keep duplicate (sub, obj) facts")
    parser.add_argument("--exclude-other-valid", action="store_true", help="rank without other valid objects")
    parser.add_argument("--mrr-cap", type=non_negative_int, default=1000,
                        help="LAMA caps MRR at rank 1000; 0 = no cap")
    parser.add_argument("--max-train", type=non_negative_int, default=None,
                        help="use at most N train facts per relation")
    parser.add_argument("--max-test", type=positive_int, default=None, help="use at most N test facts per relation")
    parser.add_argument("--max-dev", type=non_negative_int, default=None, help="use at most N dev facts per relation")
    parser.add_argument("--max-prompts", type=positive_int, default=None,
                        help="use the first N prompts of --init that this LM can read (default: all)")
    parser.add_argument("--seeds", type=positive_int, default=1, help="repeat with N seeds, report mean ± std")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--epochs", type=positive_int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--patience", type=non_negative_int, default=None)
    parser.add_argument("--em", action="store_true", help="the reference code's EM schedule for mixture weights")
    parser.add_argument("--output", default="runs/lama")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    parser.add_argument("--data-parallel", action="store_true",
                        help="train each relation with all processes together (data parallel) instead of one "
                        "relation per process")
    parser.add_argument("--sharding", type=Path, default=None,
                        help="shard the frozen base model over the processes as this JSON file says (with "
                        "--data-parallel; benchmarks/configs/fsdp2.json, docs/distributed.md)")
    parser.add_argument("--joint", action="store_true",
                        help="train every relation's own adapter in one batched loop (per-row adapters): the same "
                        "per-relation results as one relation at a time, in less wall time (docs/lama-harness.md)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the public LAMA files into --data-dir (resumable, checked), then exit")
    return parser.parse_args(argv)


def train_settings(args: argparse.Namespace, seed: int) -> TrainSettings:
    base = METHODS[args.method].defaults
    overrides = {
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "patience": args.patience,
    }
    values = {**asdict(base), **{k: v for k, v in overrides.items() if v is not None}, "seed": seed}
    values["em"] = args.em
    if METHODS[args.method].native_peft:
        # fit() puts parameters outside our adapters in the "base" group: give them the adapter's weight decay
        values["base_weight_decay"] = values["weight_decay"]
    return TrainSettings(**values)


@dataclass
class RelationJob:
    """One (relation, seed) job before training: its facts, prompts, manual-row ranks and adapter RNG state."""

    relation: str
    seed: int
    train: list[dict[str, str]]
    dev: list[dict[str, str]]
    test: list[dict[str, str]]
    dropped: dict[str, dict[str, int]]
    manual_template: str
    templates: list[str]
    prompts_left_out: int
    manual: torch.Tensor | None
    rng_state: torch.Tensor

    @property
    def adapter(self) -> str:
        """The adapter's name, also its checkpoint folder's."""
        return f"{self.relation}-seed{self.seed}"


def is_manual_row(method: str, prompts: str) -> bool:
    """Whether the method's row is the manual row (the manual method on the manual template): scored and drawn once."""
    return method == "manual" and prompts == "manual"


def relation_seed(seed: int, relation: str) -> int:
    return seed * 1_000_003 + zlib.crc32(relation.encode())


class Probe:
    """Everything shared by the relation jobs of one run: model, tokenizer, candidates, protocol."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.data_dir = Path(args.data_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(args.model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.base = load_language_model(args.model).eval().to(device)
        self.digest = None
        if args.sharding is not None:
            self.digest = model_digest(self.base)  # of the whole weights, before each process keeps its shard
            shard_harness_base(self.base, args.sharding)
        args.lm_kind = detect_lm_kind(self.base)
        if METHODS[args.method].native_peft and args.lm_kind != "causal":
            raise SystemExit(f"--method {args.method} reads the answer after the prompt, so it needs a causal LM; "
                             f"{args.model} is a {args.lm_kind} LM")
        args.tokenizer = self.tokenizer
        args.embed_size = int(self.base.get_input_embeddings().weight.shape[1])
        self.relations = lama_data.load_relations(self.data_dir)
        words = lama_data.load_candidates(self.data_dir, args.candidates, args.model)
        self.candidate_words = words
        self.candidates = None if words is None else lama_data.candidate_ids(self.tokenizer, words)
        self.candidate_tensor = None if self.candidates is None else torch.tensor(list(self.candidates.values()))
        self.column = {w: i for i, w in enumerate(self.candidates or {})}

    def facts(self, relation: str, split: str) -> tuple[list[dict[str, str]], dict[str, int]]:
        raw = lama_data.load_facts(self.data_dir, relation, split=split, corpus=self.args.split)
        result = lama_data.filter_facts(raw, self.tokenizer, self.candidate_words, dedupe=not self.args.no_dedupe)
        kept = result.kept.select_columns(["sub", "obj", "relation"]).to_list()
        kept, screened = screen_facts(kept, self.tokenizer)
        dropped = {**result.dropped, **screened, "total": len(raw)}
        limit = {"train": self.args.max_train, "dev": self.args.max_dev, "test": self.args.max_test}.get(split)
        if limit is not None and len(kept) > limit:
            dropped["over_limit"] = len(kept) - limit
            kept = kept[:limit]
        return kept, dropped

    def manual_template(self, relation: str) -> str:
        """The LAMA manual template (relations.jsonl, or the Google-RE / ConceptNet prompt files)."""
        if relation in self.relations:
            return lama_data.validate_template(self.relations[relation].template, f"relations.jsonl {relation}")
        return lama_data.load_prompts(self.data_dir, "manual", relation)[0]

    def relation_type(self, relation: str) -> str:
        return self.relations[relation].type if relation in self.relations else "n/a"

    def templates(self, relation: str) -> tuple[list[str], int]:
        """The --init prompts this LM can read (first --max-prompts of them) and how many were left out.

        A causal LM reads only the text before [Y], so a prompt whose subject [X] does not come before [Y]
        (``[Y] native [X] .``, ``The capital of [Y] is [X] .``) cannot be answered from the subject: such prompts are
        left out (and counted).
        """
        if self.args.init == "manual":
            return [self.manual_template(relation)], 0
        prompts = lama_data.load_prompts(self.data_dir, self.args.init, relation)
        usable = [p for p in prompts if self.args.lm_kind != "causal" or subject_before_answer(p)]
        kept = usable[: self.args.max_prompts] if self.args.max_prompts else usable
        if not kept:
            raise SystemExit(f"none of the {len(prompts)} {self.args.init!r} prompts of {relation} can be read by a "
                             f"{self.args.lm_kind} LM (in each, the subject [X] comes after the answer slot [Y], and "
                             "a causal LM reads only the text before [Y])")
        return kept, len(prompts) - len(kept)

    def exclusion(self, relation: str) -> Callable[[list[dict[str, str]]], torch.Tensor] | None:
        if not self.args.exclude_other_valid:
            return None
        splits = [lama_data.load_facts(self.data_dir, relation, split=s, corpus=self.args.split) for s in
                  ("train", "dev", "test")]
        valid = lama_data.valid_objects(splits)
        column = self.column or {w: i for i, w in enumerate(self.tokenizer.convert_ids_to_tokens(
            list(range(len(self.tokenizer)))))}
        width = len(self.column) if self.column else int(self.base.get_input_embeddings().weight.shape[0])
        return lambda chunk: other_valid_mask(
            [f["relation"] for f in chunk], [f["sub"] for f in chunk], valid, column, width
        )

    def prepare(self, relation: str, seed: int) -> RelationJob | dict[str, Any]:
        """A relation's facts, prompts and manual-row ranks, with the RNG state its adapter is built from (or the
        record of a relation skipped because no test fact is left)."""
        train, train_drop = self.facts(relation, "train")
        dev, dev_drop = self.facts(relation, "dev")
        test, test_drop = self.facts(relation, "test")
        dropped = {"train": train_drop, "dev": dev_drop, "test": test_drop}
        if not test:
            return {"relation": relation, "seed": seed, "type": self.relation_type(relation), "skipped":
                    f"no test fact left after filtering (dropped: {test_drop})", "dropped": dropped}
        torch.manual_seed(relation_seed(seed, relation))
        manual_template = self.manual_template(relation)
        templates, prompts_left_out = self.templates(relation)
        manual = None  # the manual row is the method's own row: scored once
        if not is_manual_row(self.args.method, self.args.init):
            manual = self.evaluate(_manual([manual_template], self.args), relation, test)
        return RelationJob(relation, seed, train, dev, test, dropped, manual_template, templates, prompts_left_out,
                           manual, torch.get_rng_state())

    def record(self, job: RelationJob, ranks: torch.Tensor, none_ranks: torch.Tensor, init_ranks: torch.Tensor,
               fit_result: FitResult | None, train_seconds: float) -> dict[str, Any]:
        """One (relation, seed) result; ``kept`` says which epoch's parameters were evaluated (0: the starting ones,
        when no epoch beat them on dev) and the dev P@1 before training and of the kept epoch."""
        manual = init_ranks if job.manual is None else job.manual
        history = [] if fit_result is None else fit_result.history
        kept = None if fit_result is None else {"epoch": fit_result.best_epoch, "dev_p1": fit_result.best_dev,
                                                 "start_dev_p1": fit_result.start_dev}
        return {
            "relation": job.relation,
            "seed": job.seed,
            "type": self.relation_type(job.relation),
            "templates": job.templates,
            "prompts_left_out": job.prompts_left_out,
            "ranks": ranks.tolist(),
            "none_ranks": none_ranks.tolist(),
            "init_ranks": init_ranks.tolist(),
            "manual_ranks": manual.tolist(),
            "history": history,
            "kept": kept,
            "train_seconds": round(train_seconds, 3),
            "facts": {"train": len(job.train), "dev": len(job.dev), "test": len(job.test)},
            "dropped": job.dropped,
        }

    def run_relation(self, relation: str, seed: int, accelerator: Accelerator | None) -> dict[str, Any]:
        """Train (if the method trains) and evaluate one relation with one seed."""
        args = self.args
        method = METHODS[args.method]
        job = self.prepare(relation, seed)
        if isinstance(job, dict):
            return job
        peft_model = get_peft_model(self.base, method.build(job.templates, args))
        try:
            if method.native_peft:
                model, collator = peft_baselines.native_adapter(peft_model, self.tokenizer, job.manual_template,
                                                                self.candidate_tensor)
            else:
                model = peft_model
                collator = PromptCollator(self.tokenizer, model, candidate_ids=self.candidate_tensor)
            exclude = self.exclusion(relation)
            init_ranks = rank_answers(model, collator, job.test, exclude=exclude)
            result: FitResult | None = None
            train_started = time.perf_counter()
            if method.train and job.train:
                checkpoint = Path(args.output) / "checkpoints" / f"{relation}-seed{seed}"
                result = fit(model, collator, job.train, job.dev or job.train, train_settings(args, seed), checkpoint,
                             progress=False, description=relation,  # the run's one bar counts relations
                             accelerator=accelerator if args.data_parallel else None)
            train_seconds = time.perf_counter() - train_started
            ranks = rank_answers(model, collator, job.test, exclude=exclude) if method.train else init_ranks
            none_ranks = rank_answers(model, collator, [{**f, "sub": NONE} for f in job.test], exclude=exclude)
        finally:
            if not method.native_peft:  # peft's prompt-learning models wrap the base without changing it
                peft_model.unload()
        return self.record(job, ranks, none_ranks, init_ranks, result, train_seconds)

    def run_joint(self, relations: list[str], seed: int, progress: bool) -> list[dict[str, Any]]:
        """Every relation's own adapter trained in one batched loop (``fit_joint``), then evaluated as
        ``run_relation`` evaluates it: per relation the same initial parameters, batches, settings and checkpoints
        (``OUTPUT/checkpoints/<rel>-seed<seed>``) as a run of one relation at a time."""
        args = self.args
        method = METHODS[args.method]
        prepared = {relation: self.prepare(relation, seed) for relation in relations}
        jobs = [job for job in prepared.values() if isinstance(job, RelationJob) and job.train]
        records = {relation: job for relation, job in prepared.items() if isinstance(job, dict)}
        model = None
        try:
            for job in jobs:  # each adapter starts from the RNG state a run of its relation alone would build it in
                torch.set_rng_state(job.rng_state)
                config = method.build(job.templates, args)
                if model is None:
                    model = get_peft_model(self.base, config, adapter_name=job.adapter)
                else:
                    model.add_adapter(job.adapter, config)
            tasks, exclude, init_ranks = [], {}, {}
            for job in jobs:
                model.set_adapter(job.adapter)
                collator = PromptCollator(self.tokenizer, model, candidate_ids=self.candidate_tensor,
                                          adapter_name=job.adapter)
                exclude[job.adapter] = self.exclusion(job.relation)
                init_ranks[job.adapter] = rank_answers(model, collator, job.test, exclude=exclude[job.adapter])
                tasks.append(JointTask(job.adapter, collator, job.train, job.dev or job.train,
                                       train_settings(args, seed)))
            train_started = time.perf_counter()
            results = fit_joint(model, tasks, Path(args.output) / "checkpoints", progress=progress,
                                description=f"{len(tasks)} relations jointly, seed {seed}") if tasks else {}
            train_seconds = time.perf_counter() - train_started
            for job, task in zip(jobs, tasks, strict=True):
                model.set_adapter(job.adapter)
                ranks = rank_answers(model, task.collator, job.test, exclude=exclude[job.adapter])
                none_ranks = rank_answers(model, task.collator, [{**f, "sub": NONE} for f in job.test],
                                          exclude=exclude[job.adapter])
                record = self.record(job, ranks, none_ranks, init_ranks[job.adapter], results[job.adapter],
                                     train_seconds / len(jobs))  # the run's training time, shared evenly
                records[job.relation] = {**record, "joint": {"relations": len(jobs),
                                                             "train_seconds": round(train_seconds, 3)}}
        finally:
            if model is not None:
                model.unload()
        for relation in relations:  # a relation without training facts is evaluated on its own
            if relation not in records:
                records[relation] = self.run_relation(relation, seed, None)
        return [records[relation] for relation in relations]

    def run_pooled(self, relations: list[str], seed: int, accelerator: Accelerator) -> list[dict[str, Any]]:
        """One adapter trained on every relation's facts together (PromptGen), evaluated per relation; the records
        are built as ``run_relation`` builds them, with the pooled training time shared evenly."""
        args = self.args
        method = METHODS[args.method]
        prepared = {relation: self.prepare(relation, seed) for relation in relations}
        jobs = [job for job in prepared.values() if isinstance(job, RelationJob)]
        records = {relation: job for relation, job in prepared.items() if isinstance(job, dict)}
        if not jobs:
            return [records[relation] for relation in relations]
        for job in jobs:  # the generator reads each fact with its relation's manual template
            for split in (job.train, job.dev, job.test):
                split[:] = [{**fact, "template": job.manual_template} for fact in split]
        train = [fact for job in jobs for fact in job.train]
        dev = [fact for job in jobs for fact in job.dev] or train
        torch.manual_seed(relation_seed(seed, "joint"))
        config = pooled_config(method, args, train)
        config.compile(self.tokenizer)
        model = get_peft_model(self.base, config)
        try:
            scored = PromptGenCollator(self.tokenizer, model, leak_rows=False, candidate_ids=self.candidate_tensor)
            leaky = PromptGenCollator(self.tokenizer, model, leak_rows=True, candidate_ids=self.candidate_tensor)
            exclude = {job.relation: self.exclusion(job.relation) for job in jobs}
            init = {job.relation: rank_answers(model, scored, job.test, exclude=exclude[job.relation]) for job in jobs}
            warm = self.warm_up(model, scored, jobs, train, seed) if args.warm_up_epochs else None
            world = accelerator if accelerator.num_processes > 1 else None
            train_started = time.perf_counter()
            result = fit(model, leaky, train, dev, train_settings(args, seed),
                         Path(args.output) / "checkpoints" / f"joint-seed{seed}",
                         progress=accelerator.is_local_main_process, description="joint", accelerator=world,
                         dev_metric=lambda: precision_at_1(rank_answers(model, scored, dev)))
            train_seconds = time.perf_counter() - train_started
            for job in jobs:
                ranks = rank_answers(model, scored, job.test, exclude=exclude[job.relation])
                none_ranks = rank_answers(model, leaky, job.test, scores="none_log_probs",
                                          exclude=exclude[job.relation])
                record = self.record(job, ranks, none_ranks, init[job.relation], result,
                                     train_seconds / len(jobs))
                record["warm_up"] = warm
                records[job.relation] = {**record, "templates": config.templates,
                                         "pooled": {"relations": len(jobs), "train_seconds": round(train_seconds, 3)}}
        finally:
            model.unload()
        return [records[relation] for relation in relations]

    def warm_up(self, model: Any, collator: Any, jobs: list[Any], train: list[dict[str, str]], seed: int) -> Any:
        """PromptGen's supervised start on the training facts: each relation's prompts of ``--warm-up-prompts``."""
        kinds = [kind for kind in self.args.warm_up_prompts.split(",") if kind and kind != "manual"]
        paraphrases: dict[str, list[str]] = {job.manual_template: [] for job in jobs}
        without: dict[str, list[str]] = {}  # prompt kind -> relations that have none of it (counted in the record)
        for kind in kinds:
            for job in jobs:
                try:
                    paraphrases[job.manual_template] += lama_data.load_prompts(self.data_dir, kind, job.relation)
                except ValueError as error:
                    if not str(error).startswith(f"no {kind!r} prompts"):
                        raise
                    without.setdefault(kind, []).append(job.relation)
        torch.manual_seed(relation_seed(seed, "warm-up"))
        report = warm_up(model, collator, train, paraphrases, epochs=self.args.warm_up_epochs,
                         learning_rate=self.args.warm_up_lr, batch_size=train_settings(self.args, seed).batch_size,
                         seed=seed)
        return {**report, "relations_without_prompts": without}

    def evaluate(self, config: Any, relation: str, test: list[dict[str, str]]) -> torch.Tensor:
        model = get_peft_model(self.base, config)
        try:
            collator = PromptCollator(self.tokenizer, model, candidate_ids=self.candidate_tensor)
            return rank_answers(model, collator, test, exclude=self.exclusion(relation))
        finally:
            model.unload()


# ------------------------------------------------------------------------------------------------ reporting


def summarise(records: list[dict[str, Any]], key: str, mrr_cap: int | None) -> dict[str, Any]:
    metric = LamaRanking()
    for record in records:
        metric.add_batch(ranks=record[key], relations=[record["relation"]] * len(record[key]),
                         relation_types=[record["type"]] * len(record[key]))
    return metric.compute(k=(1, 10), mrr_cap=mrr_cap)


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def kept_epochs(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch each fit kept (0: its starting parameters, when no epoch beat them on dev P@1), by fit: one per
    (relation, seed), or one per seed when a single model is trained on every relation (``pooled``)."""
    fits = {}
    for record in records:
        if record.get("kept") is not None:
            fit = "pooled" if "pooled" in record else record["relation"]
            name = f"{fit}-seed{record['seed']}"
            fits[name] = record["kept"]
    started = sorted(name for name, kept in fits.items() if kept["epoch"] == 0)
    return {"fits": len(fits), "kept_start": len(started), "kept_start_fits": started, "per_fit": fits}


def describe_kept(kept: dict[str, Any]) -> str:
    """One line on what the evaluated parameters are; loud when training never beat the starting parameters."""
    if not kept["fits"]:
        return "Kept epochs: no training."

    def dev(value: float | None) -> str:
        return "not recorded" if value is None else f"{100 * value:.1f}"

    if kept["fits"] == 1:
        name, fit = next(iter(kept["per_fit"].items()))
        line = (f"Kept epoch ({name}): {fit['epoch']}, dev P@1 {dev(fit['dev_p1'])} "
                f"(before training {dev(fit['start_dev_p1'])}).")
    else:
        epochs = sorted(fit["epoch"] for fit in kept["per_fit"].values())
        line = (f"Kept epochs over {kept['fits']} fits: median {statistics.median(epochs):g}, "
                f"range {epochs[0]}–{epochs[-1]}.")
    if kept["kept_start"]:
        shown = ", ".join(kept["kept_start_fits"][:10]) + (" ..." if kept["kept_start"] > 10 else "")
        line += (f" **{kept['kept_start']} of {kept['fits']} fits kept their starting parameters**: no epoch beat "
                 f"them on dev P@1, so the trained row is the untrained prompt there ({shown}).")
    return line


def report(args: argparse.Namespace, all_records: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    cap = args.mrr_cap or None
    records = [r for r in all_records if "skipped" not in r]
    skipped = {r["relation"]: r["skipped"] for r in all_records if "skipped" in r}
    if not records:
        raise SystemExit(f"every relation was skipped, nothing to report: {skipped}")
    seeds = sorted({r["seed"] for r in records})
    per_seed = {s: {k: summarise([r for r in records if r["seed"] == s], k, cap) for k in
                    ("ranks", "init_ranks", "manual_ranks", "none_ranks")} for s in seeds}
    uncapped = {s: summarise([r for r in records if r["seed"] == s], "ranks", None) for s in seeds}
    headline = {}
    for label, key in (("method", "ranks"), ("init", "init_ranks"), ("manual", "manual_ranks"),
                       ("none", "none_ranks")):
        for avg in ("macro", "micro"):
            for metric in ("P@1", "P@10", "MRR"):
                values = [100 * per_seed[s][key][avg][metric] for s in seeds]
                headline[f"{label}.{avg}.{metric}"] = mean_std(values)
    headline["method.macro.MRR_uncapped"] = mean_std([100 * uncapped[s]["macro"]["MRR"] for s in seeds])
    dropped: dict[str, dict[str, int]] = {}
    for record in all_records:
        if record["seed"] != seeds[0]:
            continue
        for split, counts in record["dropped"].items():
            for reason, count in counts.items():
                dropped.setdefault(split, {}).setdefault(reason, 0)
                dropped[split][reason] += count
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
        "train_seconds": mean_std([sum(r.get("train_seconds", 0.0) for r in records if r["seed"] == s) for s in seeds]),
        "headline": headline,
        "dropped_facts": dropped,
        "kept_epochs": kept_epochs(records),
        "skipped_relations": skipped,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "published": published(args.method, args.init, args.model, args.candidates),
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


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    # filtering facts and loading weights are quick; the run shows one bar, over its relations
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    if args.download:
        lama_data.download_lama(args.data_dir)
        return None
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"--data-dir {args.data_dir} does not exist; run with --download once (online) to fetch the "
                         "LAMA data there, or pass the folder of a local copy (layout: docs/lama-data-and-metrics.md)")
    check_joint(args)
    if args.sharding is not None and METHODS[args.method].pooled:
        raise SystemExit(f"--sharding cannot be used with --method {args.method}: {PromptGenLayer.unshardable_reason}")
    if args.sharding is not None and not args.data_parallel:
        raise SystemExit("--sharding needs --data-parallel: every process must run every relation's forwards, since "
                         "each holds only a shard of the model")
    if args.prompt_form == "prefix" and not METHODS[args.method].prefix_form:
        names = ", ".join(name for name, method in METHODS.items() if method.prefix_form)
        raise SystemExit(f"--prompt-form prefix applies to --method {names}; --method {args.method} reads its "
                         "prompt as it is")
    check_model_source("--model", args.model)
    if METHODS[args.method].pooled:
        check_model_source("--generator", args.generator)
    accelerator = Accelerator()
    args.precision = mixed_precision_used(accelerator)
    if args.precision["note"] and accelerator.is_main_process:
        print(f"warning: {args.precision['note']}", file=sys.stderr)
    started = time.time()
    probe = Probe(args, accelerator.device)
    available = lama_data.available_relations(args.data_dir, args.split, "test")
    wanted = args.relations.split(",") if args.relations else available
    unknown = [r for r in wanted if r not in available]
    if unknown:
        raise SystemExit(f"unknown relation(s) {unknown} for corpus {args.split!r}; available: {available}")
    if not METHODS[args.method].pooled:
        for relation in wanted:  # a relation without a prompt this LM can read stops the run before any training
            probe.templates(relation)
    out = Path(args.output)
    return run_locked(out, accelerator.is_main_process, lambda: run(args, accelerator, probe, wanted, out, started))


#: the keys of a --sharding file and their defaults
SHARDING_DEFAULTS: dict[str, Any] = {"engine": "fsdp2", "reshard_after_forward": True, "activation_checkpointing": True}


def shard_harness_base(base: torch.nn.Module, path: Path) -> None:
    """Shard ``base`` over the processes as the --sharding file ``path`` says (``SHARDING_DEFAULTS`` for absent keys).

    Activation checkpointing runs where transformers runs it: in train mode, i.e. for methods trained with dropout
    on (P-tuning); the others train the frozen LM in eval mode.
    """
    try:
        options = {**SHARDING_DEFAULTS, **json.loads(path.read_text(encoding="utf-8"))}
    except (OSError, ValueError) as error:
        raise SystemExit(f"--sharding {path}: expected a readable JSON file ({error})") from None
    unknown = sorted(set(options) - set(SHARDING_DEFAULTS))
    if unknown or options["engine"] != "fsdp2":
        raise SystemExit(f"--sharding {path}: expected the keys {sorted(SHARDING_DEFAULTS)} with engine 'fsdp2', "
                         f"got unknown keys {unknown} and engine {options['engine']!r}")
    if options["activation_checkpointing"]:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    shard_base_model(base, reshard_after_forward=bool(options["reshard_after_forward"]))


def check_joint(args: argparse.Namespace) -> None:
    """--joint trains one adapter per relation in one loop: refuse the settings it cannot honour."""
    if not args.joint:
        return
    method = METHODS[args.method]
    reason = (
        "--method manual trains nothing" if not method.train
        else f"--method {args.method} already trains one adapter on every relation's facts" if method.pooled
        else f"peft's own {args.method} cannot mix adapters in one batch" if method.native_peft
        else "the EM schedule (--em) runs one adapter at a time" if args.em
        else "--data-parallel splits each relation's batches over processes; --joint splits the relations"
        if args.data_parallel else None
    )
    if reason:
        raise SystemExit(f"--joint cannot be used here: {reason}")


def run_manifest(args: argparse.Namespace, probe: Probe, relations: list[str]) -> dict[str, Any]:
    """What a resumed run must share with the saved one: settings, library version, base model, data."""
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "output", "download", "precision")
                and isinstance(v, (str, int, float, bool, list, type(None)))}  # options, not objects set on args
    data = {relation: digest([probe.facts(relation, split)[0] for split in ("train", "dev", "test")])
            for relation in relations}
    return {"settings": settings, "library": prompt_adapters.__version__,
            "base_model": probe.digest or model_digest(probe.base),
            "data": data}


def run(args: argparse.Namespace, accelerator: Accelerator, probe: Probe, wanted: list[str], out: Path,
        started: float) -> dict[str, Any] | None:
    """Run (or resume) every (relation, seed) job of an output directory this process holds the lock of."""
    refuse_used_output(out, args.resume, accelerator.is_main_process)
    if accelerator.is_main_process:
        remove_stale_temporaries(out)
        remove_stale_temporaries(out / "relations")
        try:
            check_manifest(out, run_manifest(args, probe, wanted), args.resume)
        except ResumeMismatchError as error:
            raise SystemExit(str(error)) from None
    accelerator.wait_for_everyone()
    first_seed = args.seed if args.seed is not None else METHODS[args.method].defaults.seed
    seeds = [first_seed + i for i in range(args.seeds)]
    jobs = [(rel, seed) for seed in seeds for rel in wanted]
    if METHODS[args.method].pooled:
        for seed in seeds:
            targets = [out / "relations" / f"{relation}-seed{seed}.json" for relation in wanted]
            if args.resume and all(read_record(t) is not None for t in targets):
                continue
            with accelerator.autocast():
                records = probe.run_pooled(wanted, seed, accelerator)
            if accelerator.is_main_process:
                for target, record in zip(targets, records, strict=True):
                    atomic_write_text(target, json.dumps({**record, "process": [0, accelerator.num_processes]}))
            accelerator.wait_for_everyone()
    if args.joint:  # each process trains its share of the relations together, one seed at a time
        for seed in seeds:
            share = wanted[accelerator.process_index :: accelerator.num_processes]
            left = [r for r in share if not (args.resume and read_record(out / "relations" / f"{r}-seed{seed}.json"))]
            if not left:
                continue
            with accelerator.autocast():
                records = probe.run_joint(left, seed, progress=accelerator.is_local_main_process)
            for relation, record in zip(left, records, strict=True):
                record["process"] = [accelerator.process_index, accelerator.num_processes]
                atomic_write_text(out / "relations" / f"{relation}-seed{seed}.json", json.dumps(record))
    mine = [] if METHODS[args.method].pooled or args.joint else jobs if args.data_parallel else jobs[
        accelerator.process_index :: accelerator.num_processes]
    bar = tqdm(mine, disable=not accelerator.is_local_main_process or not mine, desc="relations")
    for relation, seed in bar:
        bar.set_postfix(relation=relation, seed=seed)
        target = out / "relations" / f"{relation}-seed{seed}.json"
        if args.resume and read_record(target) is not None:
            continue
        with accelerator.autocast():
            record = probe.run_relation(relation, seed, accelerator)
        record["process"] = [accelerator.process_index, accelerator.num_processes]
        if not args.data_parallel or accelerator.is_main_process:
            atomic_write_text(target, json.dumps(record))
        if args.data_parallel:
            accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    records = [json.loads((out / "relations" / f"{r}-seed{s}.json").read_text()) for r, s in jobs]
    summary = report(args, records, time.time() - started)
    write_outputs(out, summary, records)
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
