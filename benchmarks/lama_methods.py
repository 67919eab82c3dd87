"""The methods of the LAMA harness: how each ``--method`` builds its adapter config, with which training defaults,
and which harness settings it can run with.

The library's methods come from ``prompt_adapters.METHODS``: a new method of the library runs here with its config
built from the templates (``templates_only``) unless ``LIBRARY_BUILDERS`` gives it a builder of its own, a function
from (templates, options) to its peft config with the paper defaults it trains with.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import peft_baselines

import prompt_adapters
from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PromptGenConfig, PTuningEncoderConfig
from prompt_adapters.methods.promptgen.model import PromptGenLayer
from prompt_adapters.training import TrainSettings


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


def manual_config(templates: list[str], args: argparse.Namespace) -> MixturePromptConfig:
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


def templates_only(config_cls: type) -> Callable[[list[str], argparse.Namespace], Any]:
    """The builder of a library method the harness knows nothing more about: its config from the templates alone,
    trained with the Qin & Eisner defaults."""
    return lambda templates, args: config_cls(templates=templates)


#: the library's methods whose config needs more from the command line than the templates, or other defaults
LIBRARY_BUILDERS: dict[str, Method] = {
    "mixture": Method(_mixture, train=True, defaults=QIN_EISNER, prefix_form=True),
    "deep": Method(_deep, train=True, defaults=QIN_EISNER, prefix_form=True),
    "ptuning": Method(_ptuning, train=True, defaults=P_TUNING, prefix_form=True),
    "promptgen": Method(_promptgen, train=True, defaults=PROMPTGEN, pooled=True),
}

#: --method name -> Method: the manual prompt, every method of the library (``prompt_adapters.METHODS``; one with no
#: entry in LIBRARY_BUILDERS is built by ``templates_only``) and peft's own prompt methods
METHODS: dict[str, Method] = {
    "manual": Method(manual_config, train=False, defaults=QIN_EISNER),
    **{
        method.name: LIBRARY_BUILDERS.get(method.name)
        or Method(templates_only(method.config_cls), train=True, defaults=QIN_EISNER)
        for method in prompt_adapters.METHODS
    },
    "peft_prompt_tuning": Method(_peft_prompt_tuning, train=True, defaults=QIN_EISNER, native_peft=True),
    "peft_p_tuning": Method(_peft_p_tuning, train=True, defaults=P_TUNING, native_peft=True),
}


def train_settings(args: argparse.Namespace, seed: int) -> TrainSettings:
    """A fit's settings: the method's paper defaults, with the command line's --epochs, --lr, --batch-size,
    --patience and --em over them."""
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


def is_manual_row(method: str, prompts: str) -> bool:
    """Whether the method's row is the manual row (the manual method on the manual template): scored and drawn once."""
    return method == "manual" and prompts == "manual"


def check_deepspeed(args: argparse.Namespace) -> None:
    """Launched with a DeepSpeed config (ZeRO-3 partitions the model in fit): refuse what cannot run that way."""
    method = METHODS[args.method]
    reason = (
        "add --data-parallel: every process must run every relation's forwards, since each holds only a partition "
        "of the model" if not args.data_parallel
        else "drop --sharding: DeepSpeed already partitions the model" if args.sharding is not None
        else f"--method {args.method} cannot run: {PromptGenLayer.unshardable_reason}" if method.pooled
        else f"--method {args.method} (peft's own adapter) is not trained under DeepSpeed here" if method.native_peft
        else "--em cannot run: its M-step writes the mixture weights in place, which DeepSpeed partitions"
        if args.em else None
    )
    if reason:
        raise SystemExit(f"launched with DeepSpeed (ZeRO-3): {reason}")


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


def check_options(args: argparse.Namespace) -> None:
    """Refuse the harness settings the chosen --method cannot run with."""
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
