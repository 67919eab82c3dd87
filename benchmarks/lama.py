"""LAMA knowledge probing: tune (or just evaluate) a prompt method per relation and report the paper-style table.

    accelerate launch benchmarks/lama.py --model bert-base-cased --method mixture --init lpaqa_mined \
        --data-dir DATA/lama --split autoprompt --candidates common_vocab_cased --output runs/mix-mined

Relations are independent jobs spread over the accelerate processes (relation i goes to process i mod n; each is
seeded from (seed, relation), so results do not depend on the number of processes). Every finished relation is
written to ``OUTPUT/relations/<rel>.json`` and every epoch to ``OUTPUT/checkpoints/``, atomically, so ``--resume``
skips finished relations and continues a partly trained one. The main process then writes ``results.json``,
``results.md`` (with the published numbers of the same setting), ``per_relation.csv`` and ``per_relation.png``.
``--compare RUN_A RUN_B`` prints paired bootstrap intervals of A - B from two finished runs.
--output must be a new or empty folder (or a run to --resume).

The recipe is built from parts: the run directory's jobs, resume and sharding come from
``prompt_adapters.job_runner``, the per-relation to macro tables from ``prompt_adapters.metrics.lama``; the
``--method`` table lives in ``lama_methods.py`` and the written outputs in ``lama_report.py``.

The benchmarks need the extra ``bench`` (pip install -e ".[bench]"): without matplotlib the figure is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
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
from lama_methods import (
    METHODS,
    PROMPT_FORMS,
    check_deepspeed,
    check_options,
    is_manual_row,
    manual_config,
    pooled_config,
    subject_before_answer,
    train_settings,
)
from lama_methods import soft_prefix_template as soft_prefix_template
from lama_report import markdown, report, write_outputs
from lama_report import per_relation_figure as per_relation_figure

import prompt_adapters
from prompt_adapters import PromptCollator, PromptGenCollator
from prompt_adapters.data import lama as lama_data
from prompt_adapters.data.lama import screen_facts
from prompt_adapters.job_runner import Job, JobRunner, precision_report, run_locked
from prompt_adapters.methods.promptgen.config import LEAK_FORMS, STOPPING, TOKEN_FORMS
from prompt_adapters.methods.promptgen.warmup import template_words, unwritable_reason, warm_up
from prompt_adapters.metrics.lama import describe_kept as describe_kept
from prompt_adapters.metrics.lama import kept_epochs as kept_epochs
from prompt_adapters.metrics.lama import other_valid_mask
from prompt_adapters.metrics.lama_comparison import LAMA_MEASURES, compare_lama_runs, lama_comparison_markdown
from prompt_adapters.models import load_language_model
from prompt_adapters.run_dir import check_model_source, digest, model_digest, non_negative_int, positive_int
from prompt_adapters.sharding import shard_base_model
from prompt_adapters.training import (
    FitResult,
    JointTask,
    dev_precision_at_1,
    fit,
    fit_joint,
    precision_at_1,
    rank_answers,
)
from prompt_adapters.tuner import detect_lm_kind
from prompt_adapters.zero3 import deepspeed_plugin, launch_accelerator

#: the subject of the None diagnostic row
NONE = "None"
PROMPTS_SHOWN = 3  # PromptGen: test facts per relation whose written prompt the report shows


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
    parser.add_argument("--warm-up-select", choices=("all", "best"), default="all",
                        help="PromptGen warm-up: teach every prompt of --warm-up-prompts (all), or per relation the "
                        "one the generator can write that the downstream model scores best on the training facts "
                        "(best)")
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
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each finished job's training checkpoint in OUTPUT/checkpoints (by default removed "
                             "once the job's records are written)")
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
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=None,
                        help="instead of running: paired bootstrap 95%% intervals of A - B (macro and per relation) "
                             "from two finished output folders scored on the same test facts")
    parser.add_argument("--measure", default="P@1", choices=LAMA_MEASURES, help="what --compare compares")
    parser.add_argument("--compare-subject", default="test", choices=("test", "none"),
                        help="--compare on the test facts, or on the same facts with the subject replaced by None "
                             "(the label-leak diagnostic; lower is better)")
    return parser.parse_args(argv)



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



def checkpoint_dir(args: argparse.Namespace, name: str) -> Path:
    """Where the adapter ``name`` (``<relation>-seed<seed>``, or ``joint-seed<seed>`` when pooled) saves its training
    checkpoints; a joint run's ``fit_joint`` saves each adapter's in the same place."""
    return Path(args.output) / "checkpoints" / name


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
            manual = self.evaluate(manual_config([manual_template], self.args), relation, test)
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
                checkpoint = checkpoint_dir(args, job.adapter)
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
        paraphrases, without = self.warm_up_paraphrases(jobs) if args.warm_up_epochs else ({}, {})
        selecting = args.warm_up_epochs and args.warm_up_select == "best"
        ranked = (self.rank_warm_up_prompts(jobs, paraphrases, progress=accelerator.is_local_main_process)
                  if selecting else None)  # scored before the generator is attached
        torch.manual_seed(relation_seed(seed, "joint"))
        config = pooled_config(method, args, train)
        config.compile(self.tokenizer)
        model = get_peft_model(self.base, config)
        try:
            scored = PromptGenCollator(self.tokenizer, model, leak_rows=False, candidate_ids=self.candidate_tensor)
            leaky = PromptGenCollator(self.tokenizer, model, leak_rows=True, candidate_ids=self.candidate_tensor)
            exclude = {job.relation: self.exclusion(job.relation) for job in jobs}
            init = {job.relation: rank_answers(model, scored, job.test, exclude=exclude[job.relation]) for job in jobs}
            warm = (self.warm_up(model, scored, jobs, train, seed, paraphrases, without, ranked,
                                 progress=accelerator.is_local_main_process) if args.warm_up_epochs else None)
            world = accelerator if accelerator.num_processes > 1 else None
            train_started = time.perf_counter()
            result = fit(model, leaky, train, dev, train_settings(args, seed),
                         checkpoint_dir(args, f"joint-seed{seed}"),
                         progress=accelerator.is_local_main_process, description="joint", accelerator=world,
                         dev_metric=dev_precision_at_1(model, scored, dev))
            train_seconds = time.perf_counter() - train_started
            for job in jobs:
                ranks = rank_answers(model, scored, job.test, exclude=exclude[job.relation])
                none_ranks = rank_answers(model, leaky, job.test, scores="none_log_probs",
                                          exclude=exclude[job.relation])
                record = self.record(job, ranks, none_ranks, init[job.relation], result,
                                     train_seconds / len(jobs))
                record["warm_up"] = warm
                record["written_prompts"] = self.written_prompts(model, scored, job.test[:PROMPTS_SHOWN])
                records[job.relation] = {**record, "templates": config.templates,
                                         "pooled": {"relations": len(jobs), "train_seconds": round(train_seconds, 3)}}
        finally:
            model.unload()
        return [records[relation] for relation in relations]

    def written_prompts(self, model: Any, collator: Any, facts: list[dict[str, str]]) -> list[dict[str, str]]:
        """The prompts the kept generator writes for ``facts``, as text (the report's readable prompts)."""
        model.eval()
        texts = model.base_model.generated_prompts(collator(facts), self.tokenizer)
        return [{"sub": fact["sub"], "obj": fact["obj"], "prompt": text}
                for fact, text in zip(facts, texts, strict=True)]

    def warm_up_paraphrases(self, jobs: list[Any]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Each relation's prompts of ``--warm-up-prompts`` besides the manual one, keyed by its manual template, and
        per prompt kind the relations that have none of it."""
        kinds = [kind for kind in self.args.warm_up_prompts.split(",") if kind and kind != "manual"]
        paraphrases: dict[str, list[str]] = {job.manual_template: [] for job in jobs}
        without: dict[str, list[str]] = {}
        for kind in kinds:
            for job in jobs:
                try:
                    paraphrases[job.manual_template] += lama_data.load_prompts(self.data_dir, kind, job.relation)
                except ValueError as error:
                    if not str(error).startswith(f"no {kind!r} prompts"):
                        raise
                    without.setdefault(kind, []).append(job.relation)
        return paraphrases, without

    def rank_warm_up_prompts(self, jobs: list[Any], paraphrases: dict[str, list[str]],
                             progress: bool) -> dict[str, list[tuple[str, float]]]:
        """Per relation, its warm-up prompts that start at the subject (the manual one and its ``paraphrases``), by
        the downstream model's P@1 on the relation's training facts, best first (ties keep the listed order: the
        manual prompt first)."""
        prompts = {job.relation: [template for template in
                                  dict.fromkeys([job.manual_template, *paraphrases[job.manual_template]])
                                  if template_words(template) is not None] for job in jobs}
        bar = tqdm(total=sum(map(len, prompts.values())), disable=not progress, desc="warm-up prompts", leave=False)
        ranked = {}
        for job in jobs:
            scores = []
            for template in prompts[job.relation]:
                ranks = self.evaluate(manual_config([template], self.args), job.relation, job.train)
                scores.append((template, precision_at_1(ranks)))
                bar.update()
            ranked[job.relation] = sorted(scores, key=lambda item: -item[1])
        bar.close()
        return ranked

    def warm_up(self, model: Any, collator: Any, jobs: list[Any], train: list[dict[str, str]], seed: int,
                paraphrases: dict[str, list[str]], without: dict[str, list[str]],
                ranked: dict[str, list[tuple[str, float]]] | None, progress: bool) -> Any:
        """PromptGen's supervised start on the training facts: each relation's prompts of ``--warm-up-prompts``
        (``paraphrases`` and ``without``, from ``warm_up_paraphrases``), or with ``ranked`` (``--warm-up-select best``)
        the best-scored one the generator can write."""
        paraphrases = dict(paraphrases)  # the chosen prompt replaces a relation's list; the caller's stays whole
        selected: dict[str, Any] = {}
        if ranked is not None:
            for job in jobs:
                writable = [(template, p1) for template, p1 in ranked[job.relation]
                            if unwritable_reason(model, collator, template) is None]
                paraphrases[job.manual_template] = [writable[0][0]] if writable else []
                if not writable:
                    warnings.warn(f"{job.relation}: the generator can write none of its {len(ranked[job.relation])} "
                                  "warm-up prompts that start at the subject; its facts get no warm-up target",
                                  stacklevel=2)
                selected[job.relation] = ({"prompt": writable[0][0], "train_p1": writable[0][1],
                                           "manual_train_p1": dict(ranked[job.relation]).get(job.manual_template),
                                           "writable_prompts": len(writable)} if writable else None)
        torch.manual_seed(relation_seed(seed, "warm-up"))
        report = warm_up(model, collator, train, paraphrases, epochs=self.args.warm_up_epochs,
                         learning_rate=self.args.warm_up_lr, batch_size=train_settings(self.args, seed).batch_size,
                         seed=seed, include_template=ranked is None, progress=progress)
        chosen = {"selected": selected, "ranking": ranked} if ranked is not None else {}
        return {**report, "relations_without_prompts": without, **chosen}

    def evaluate(self, config: Any, relation: str, test: list[dict[str, str]]) -> torch.Tensor:
        model = get_peft_model(self.base, config)
        try:
            collator = PromptCollator(self.tokenizer, model, candidate_ids=self.candidate_tensor)
            return rank_answers(model, collator, test, exclude=self.exclusion(relation))
        finally:
            model.unload()


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.compare:
        run_a, run_b = (Path(p) for p in args.compare)
        intervals = compare_lama_runs(run_a, run_b, args.measure, args.mrr_cap or None,
                                      subject=args.compare_subject)
        print(lama_comparison_markdown(run_a, run_b, args.measure, intervals, args.compare_subject))
        return {name: vars(interval) for name, interval in intervals.items()}
    # filtering facts and loading weights are quick; the run shows one bar, over its relations
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    if args.download:
        lama_data.download_lama(args.data_dir)
        return None
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"--data-dir {args.data_dir} does not exist; run with --download once (online) to fetch the "
                         "LAMA data there, or pass the folder of a local copy (layout: docs/lama-data-and-metrics.md)")
    check_options(args)
    check_model_source("--model", args.model)
    if METHODS[args.method].pooled:
        check_model_source("--generator", args.generator)
    accelerator = launch_accelerator()
    if deepspeed_plugin(accelerator) is not None:
        check_deepspeed(args)
    args.precision = precision_report(accelerator)
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


def run_manifest(args: argparse.Namespace, probe: Probe, relations: list[str]) -> dict[str, Any]:
    """What a resumed run must share with the saved one: settings, library version, base model, data."""
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "output", "download", "precision",
                                                                    "keep_checkpoints")
                and isinstance(v, (str, int, float, bool, list, type(None)))}  # options, not objects set on args
    data = {relation: digest([probe.facts(relation, split)[0] for split in ("train", "dev", "test")])
            for relation in relations}
    return {"settings": settings, "library": prompt_adapters.__version__,
            "base_model": probe.digest or model_digest(probe.base),
            "data": data}


def run(args: argparse.Namespace, accelerator: Accelerator, probe: Probe, wanted: list[str], out: Path,
        started: float) -> dict[str, Any] | None:
    """Run (or resume) every (relation, seed) job of an output directory this process holds the lock of."""
    runner = JobRunner(out, "relations", args.resume, accelerator, keep_checkpoints=args.keep_checkpoints)
    runner.start(lambda: run_manifest(args, probe, wanted))
    first_seed = args.seed if args.seed is not None else METHODS[args.method].defaults.seed
    seeds = [first_seed + i for i in range(args.seeds)]

    def relations(names: list[str]) -> list[str]:
        return [name.rsplit("-seed", 1)[0] for name in names]

    def job(relations_of_job: list[str], seed: int, compute: Callable[[list[str]], list[dict[str, Any]]],
            checkpoints: tuple[Path, ...] | None = None, **options: Any) -> Job:
        """The job of these relations and seed; its checkpoints are each relation's own folder unless named."""
        names = tuple(f"{relation}-seed{seed}" for relation in relations_of_job)
        if checkpoints is None:
            checkpoints = tuple(checkpoint_dir(args, name) for name in names)
        return Job(names, compute, checkpoints=checkpoints, **options)

    def pooled(seed: int) -> Job:  # one adapter trained on every relation by every process; all or none resumed
        return job(wanted, seed, lambda _: probe.run_pooled(wanted, seed, accelerator), all_or_none=True,
                   checkpoints=(checkpoint_dir(args, f"joint-seed{seed}"),))

    def joint(share: list[str], seed: int) -> Job:  # a process's share of the relations, trained together
        return job(share, seed, lambda left: probe.run_joint(relations(left), seed,
                                                            progress=accelerator.is_local_main_process))

    def single(relation: str, seed: int) -> Job:
        return job([relation], seed, lambda _: [probe.run_relation(relation, seed, accelerator)],
                   label={"relation": relation, "seed": seed})

    processes = accelerator.num_processes
    if METHODS[args.method].pooled:
        runner.run([pooled(seed) for seed in seeds], together=True)
    elif args.joint:  # job k of each seed goes to process k
        runner.run([joint(wanted[k::processes], seed) for seed in seeds for k in range(processes)])
    else:
        runner.run([single(relation, seed) for seed in seeds for relation in wanted], together=args.data_parallel,
                   progress="relations")
    records = runner.collect([f"{relation}-seed{seed}" for seed in seeds for relation in wanted])
    if records is None:
        return None
    summary = report(args, records, time.time() - started)
    write_outputs(out, summary, records)
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
