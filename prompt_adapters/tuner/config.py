"""``PromptConfig``: the fields every prompt method shares, and the compiled templates it saves."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar, Literal, get_args

from peft import PeftConfig
from peft.utils.constants import DUMMY_TARGET_MODULES
from transformers import PreTrainedTokenizerBase

from prompt_adapters.model_facts import LM_KINDS, LMKind, tokenizer_fingerprint
from prompt_adapters.peft_registry import extend_peft_type
from prompt_adapters.template import CompiledTemplate, WordMode, compile_templates
from prompt_adapters.validation import check_field_types, check_positive

#: how soft rows start (see ``PromptConfig.init``)
InitMode = Literal["words", "random", "vocab"]
INIT_CHOICES: tuple[InitMode, ...] = get_args(InitMode)


@dataclass
class PromptConfig(PeftConfig):
    """Fields shared by every prompt method.

    A method's config subclasses it and names its ``PeftType`` member in ``method_type`` (added to peft's enum
    when the config is created, as peft's own configs carry theirs).

    Args:
        templates: prompt templates (see ``prompt_adapters.template``), e.g. ``"[X] was born in [Y] ."``.
        words: whether plain template words become trainable soft vectors (``"soft"``, Qin & Eisner) or stay
            hard anchor tokens (``"hard"``, P-tuning).
        init: how soft rows start: ``"words"`` from their word piece's embedding (rows with no word, ``[P]``, are
            sampled from the vocabulary), ``"random"`` from a normal matched to the embedding statistics, or
            ``"vocab"`` from randomly sampled vocabulary rows.
        tokenizer_name_or_path: tokenizer used to compile the templates when no ``tokenizer`` is passed; defaults
            to the base model's ``name_or_path``.
        lm_kind: ``"masked"``, ``"causal"`` or ``"seq2seq"``; detected from the model when None.
        max_length: longest row the collator builds; input fields are truncated, prompt tokens never.
        tokenizer: (init only) a tokenizer to compile the templates with right away.
    """

    #: the method's ``PeftType`` member name (e.g. ``"MIXTURE_PROMPT"``); every concrete method sets it
    method_type: ClassVar[str] = ""

    templates: list[str] = field(default_factory=list)
    words: WordMode = field(default="soft")
    init: InitMode = field(default="words")
    tokenizer_name_or_path: str | None = field(default=None)
    lm_kind: LMKind | None = field(default=None)
    max_length: int | None = field(default=None)
    compiled_templates: list[dict] | None = field(default=None, metadata={"help": "filled automatically"})
    model_fingerprint: dict | None = field(default=None, metadata={"help": "filled automatically"})
    tokenizer_fingerprint: dict | None = field(default=None, metadata={"help": "filled automatically"})
    target_modules: Any = field(default=DUMMY_TARGET_MODULES)
    modules_to_save: list[str] | None = field(default=None)
    tokenizer: InitVar[PreTrainedTokenizerBase | None] = None

    def __post_init__(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        if self.method_type:
            self.peft_type = extend_peft_type(self.method_type)  # a PeftType member, as peft's own configs
        super().__post_init__()
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        check_field_types(self, PromptConfig)
        check_positive(self, "max_length")
        if self.words not in ("soft", "hard"):
            raise ValueError(f"words must be 'soft' or 'hard', got {self.words!r}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")
        if self.lm_kind is not None and self.lm_kind not in LM_KINDS:
            raise ValueError(f"lm_kind must be one of {LM_KINDS} or None, got {self.lm_kind!r}")
        if tokenizer is not None:
            self.compile(tokenizer)

    def compile(self, tokenizer: PreTrainedTokenizerBase) -> list[CompiledTemplate]:
        """Tokenise the templates with ``tokenizer`` and keep the result in the config (saved with it).

        A config may be created without templates (peft's ``PeftConfig.from_peft_type`` builds every registered
        config from its defaults); it needs at least one by the time it is compiled.
        """
        if not self.templates:
            raise ValueError(
                f"{type(self).__name__} needs at least one template, got {self.templates!r}; "
                "e.g. templates=['[X] was born in [Y] .']"
            )
        compiled = compile_templates(self.templates, tokenizer, self.words)
        self.compiled_templates = [t.to_dict() for t in compiled]
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        if self.tokenizer_name_or_path is None and getattr(tokenizer, "name_or_path", ""):
            self.tokenizer_name_or_path = tokenizer.name_or_path
        return compiled

    def compiled(self) -> list[CompiledTemplate]:
        """The compiled templates saved in the config, each checked to hold exactly one answer slot."""
        if self.compiled_templates is None:
            raise ValueError("templates are not compiled yet: pass tokenizer= to the config or call get_peft_model")
        compiled = [CompiledTemplate.from_dict(t) for t in self.compiled_templates]
        for template in compiled:
            answers = sum(piece.kind == "answer" for piece in template.pieces)
            if answers != 1:
                raise ValueError(
                    f"compiled template {template.source!r} in the adapter config has {answers} answer slots; "
                    "exactly one is required (was adapter_config.json edited by hand?)"
                )
        return compiled
