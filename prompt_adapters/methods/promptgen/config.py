"""PromptGenConfig: Zhang et al. (2022), prompts generated per input by a seq2seq model."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from prompt_adapters.methods.promptgen.vocab import common_vocabulary
from prompt_adapters.template import CompiledTemplate, WordMode, encode_fragment
from prompt_adapters.tuner import PromptConfig
from prompt_adapters.validation import check_field_types

#: the leak term's form (see ``PromptGenConfig.leak_form``)
LeakForm = Literal["paper", "bounded"]
LEAK_FORMS: tuple[LeakForm, ...] = get_args(LeakForm)
#: what the models read at each written position (see ``PromptGenConfig.token_form``)
TokenForm = Literal["soft", "straight_through"]
TOKEN_FORMS: tuple[TokenForm, ...] = get_args(TokenForm)
#: how a segment ends before its maximum (see ``PromptGenConfig.stopping``)
Stopping = Literal["mask", "eos", "fixed"]
STOPPING: tuple[Stopping, ...] = get_args(Stopping)
#: stopping values of earlier releases, read from saved configs: "paper" was the ``</s>`` rule of the paper's text
RENAMED_STOPPING = {"paper": "eos"}


@dataclass
class PromptGenConfig(PromptConfig):
    """A fine-tuned generator writes ``num_before`` soft tokens, the answer slot, then ``num_after`` soft tokens for
    every input; the downstream model stays frozen.

    Args:
        generator_name_or_path: the generator and its tokenizer: an encoder-decoder (the paper uses bart-large) or
            a decoder-only LM (e.g. the downstream model's own architecture). A Hub id, or a local folder as a
            string or ``pathlib.Path`` (as transformers' ``from_pretrained`` takes it; saved as a string).
        min_common_words: the fewest words the two tokenizers may share (default 100). Every prompt is written in
            the shared vocabulary, so a generator that shares only a handful of words with the downstream model
            cannot write the relation's words; compiling the config refuses it, with the count.
        num_before, num_after: the maximal soft tokens before / after the answer slot (paper: m = 10, n = 5). A
            causal downstream LM reads the answer as the token after the prompt, so nothing after the answer slot
            is generated for it.
        stopping: how a segment ends before its maximum. ``mask`` (default, the paper's Figure 1): the segment
            before the answer slot ends where the generator's mask token is the most likely next token, the one
            after it where ``</s>`` is; ``eos`` (the paper's Section 3.1.2 text): both end where ``</s>`` is the
            most likely next token; ``fixed``: always ``num_before`` / ``num_after`` tokens. "Most likely" is
            among the shared vocabulary and the stop token. ``paper``, this option's name for ``eos`` in earlier
            releases, is read as ``eos`` with a warning.
        answer_words: words that also end the segment before the answer slot when one of them is the generator's
            most likely next word (``mask`` and ``eos`` only). A denoising generator reconstructs the input and
            writes the answer itself where the paper's Figure 1 decoder writes its mask token; with the objects of
            the training facts here, the segment ends where the generator reaches the answer slot. Words that are
            not in the shared vocabulary cannot be written, so they never end a segment (counted in a warning).
        leak_penalty: alpha in L = -log P(o | T(s)) + alpha * leak(T(None)), T(None) being the same generated prompt
            with the subject replaced by ``none_subject``.
        leak_form: ``paper``: leak = log P(o | T(None)) (unbounded below; the paper's form, the default for
            reproduction); ``bounded``: leak = -log(1 - P(o | T(None))), which stops pushing once the leak is gone.
        token_form: what the generator reads back and the downstream model reads at each written position.
            ``soft`` (default, the paper's eq. 1): the expectation of the embeddings under the soft token's
            distribution. ``straight_through``: the embedding of its most likely word, with the gradient of the
            expectation (a straight-through estimator). A pretrained LM spreads its next-token distribution over many
            words, and their averaged embedding is no word it knows, so its prompts fall apart after the first soft
            token; reading the most likely word keeps them text.
        relation_answer_words: answer words per relation, keyed by the relation's manual template (each example's
            ``template``): an example whose template is a key ends its first segment at these words, not at
            ``answer_words`` (which still serve the other examples). Pooled words let one relation's answers end
            another relation's prompt (a language name ends a work-location prompt); per relation they cannot.
        trained_length: train the length of the segment before the answer slot (default off). The generator's
            probability of its stop token (and of the answer words) at each step gives a distribution over lengths
            0..num_before, and the answer's probability is averaged over the prompts of every length,
            sum_L P(L) P(o | T_L(s)), in the loss and in scoring, so the length gets a gradient. ``generate()`` and
            ``generated_prompts`` write the most likely length. Costs num_before + 1 downstream rows per scored
            example. Needs ``stopping`` ``mask`` or ``eos``.
        generator_lora_rank: 0 (default): the whole generator trains. r > 0: the generator's linear layers get peft
            LoRA adapters of rank r (``lora_alpha`` = r, peft's default ratio; ``target_modules="all-linear"``) and
            only those train, so the optimiser keeps moments for a small fraction of the parameters.
        common_vocab: filled automatically: (downstream ids, generator ids) of the shared vocabulary, computed
            from the two tokenizers when the templates are compiled and saved with the adapter.
        answer_stops: filled automatically: the downstream ids of the ``answer_words`` in the shared vocabulary.
        relation_answer_stops: filled automatically: the same for each template of ``relation_answer_words``.
    """

    method_type: ClassVar[str] = "PROMPT_GEN"

    generator_name_or_path: str | None = field(default=None)
    min_common_words: int = field(default=100)
    num_before: int = field(default=10)
    num_after: int = field(default=5)
    stopping: Stopping = field(default="mask")
    answer_words: list[str] = field(default_factory=list)
    relation_answer_words: dict[str, list[str]] = field(default_factory=dict)
    trained_length: bool = field(default=False)
    generator_lora_rank: int = field(default=0)
    leak_penalty: float = field(default=0.3)
    leak_form: LeakForm = field(default="paper")
    token_form: TokenForm = field(default="soft")
    none_subject: str = field(default="None")
    common_vocab: list[list[int]] | None = field(default=None, metadata={"help": "filled automatically"})
    answer_stops: list[int] | None = field(default=None, metadata={"help": "filled automatically"})
    relation_answer_stops: dict[str, list[int]] | None = field(default=None, metadata={"help": "filled automatically"})
    templates: list[str] = field(default_factory=list)
    words: WordMode = field(default="hard")

    def __post_init__(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        if isinstance(self.generator_name_or_path, os.PathLike):  # from_pretrained takes paths; JSON keeps strings
            self.generator_name_or_path = os.fspath(self.generator_name_or_path)
        check_field_types(self, PromptConfig)  # before the range checks below compare numbers
        if self.num_before < 0 or self.num_after < 0 or self.num_before + self.num_after == 0:
            raise ValueError(
                f"num_before={self.num_before} and num_after={self.num_after} must be >= 0 and not both 0"
            )
        if self.stopping in RENAMED_STOPPING:
            renamed = RENAMED_STOPPING[self.stopping]
            warnings.warn(
                f"PromptGenConfig stopping={self.stopping!r} is now called {renamed!r} (a segment ends where </s> is "
                f"the most likely next token); read as {renamed!r}. The default is now 'mask' (the paper's Figure 1).",
                FutureWarning,
                stacklevel=3,
            )
            self.stopping = renamed
        if self.stopping not in STOPPING:
            raise ValueError(f"stopping must be one of {STOPPING}, got {self.stopping!r}")
        if (self.answer_words or self.relation_answer_words) and self.stopping == "fixed":
            raise ValueError(
                f"answer_words end a segment early, but stopping='fixed' always writes num_before tokens; use "
                f"stopping='mask' or 'eos' with answer_words ({len(self.answer_words)} given, and "
                f"{len(self.relation_answer_words)} relations in relation_answer_words)"
            )
        for template, words in self.relation_answer_words.items():
            if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
                raise TypeError(f"relation_answer_words[{template!r}] must be a list of words, got {words!r}")
        if self.trained_length and self.stopping == "fixed":
            raise ValueError(
                "trained_length=True learns where the generator's stop token ends the segment, but stopping='fixed' "
                "has no stop token; use stopping='mask' or 'eos'"
            )
        if self.generator_lora_rank < 0:
            raise ValueError(f"generator_lora_rank must be >= 0 (0: train the whole generator), got "
                             f"{self.generator_lora_rank}")
        if self.leak_form not in LEAK_FORMS:
            raise ValueError(f"leak_form must be one of {LEAK_FORMS}, got {self.leak_form!r}")
        if self.token_form not in TOKEN_FORMS:
            raise ValueError(f"token_form must be one of {TOKEN_FORMS}, got {self.token_form!r}")
        if self.min_common_words < 1:
            raise ValueError(f"min_common_words must be >= 1, got {self.min_common_words}")
        if not 0 <= self.leak_penalty < math.inf:
            raise ValueError(f"leak_penalty must be a finite number >= 0, got {self.leak_penalty}")
        if not self.templates:
            after = f" [P*{self.num_after}]" if self.num_after else ""
            before = f" [P*{self.num_before}]" if self.num_before else ""
            self.templates = [f"[X]{before} [Y]{after}"]
        super().__post_init__(tokenizer)

    def compile(self, tokenizer: PreTrainedTokenizerBase) -> list[CompiledTemplate]:
        """Compile the template and build the vocabulary the downstream and generator tokenizers share."""
        if not self.generator_name_or_path:
            raise ValueError("PromptGenConfig needs generator_name_or_path (e.g. 'facebook/bart-large')")
        compiled = super().compile(tokenizer)
        generator = AutoTokenizer.from_pretrained(self.generator_name_or_path)
        down_ids, gen_ids = common_vocabulary(tokenizer, generator)
        if len(down_ids) < self.min_common_words:
            raise ValueError(
                f"the downstream tokenizer and the generator {self.generator_name_or_path!r} share {len(down_ids)} "
                f"words (e.g. {tokenizer.convert_ids_to_tokens(down_ids[:5])}), fewer than min_common_words="
                f"{self.min_common_words}: the generator writes every prompt in the shared words, so it could not "
                "write the relation's words. Use a generator whose tokenizer covers the downstream model's words "
                "(e.g. the downstream model's own), or lower min_common_words if these words suffice"
            )
        self.common_vocab = [down_ids, gen_ids]
        if self.answer_words:
            self.answer_stops = answer_stop_ids(self.answer_words, tokenizer, down_ids)
        if self.relation_answer_words:
            self.relation_answer_stops = {
                template: answer_stop_ids(words, tokenizer, down_ids, template)
                for template, words in sorted(self.relation_answer_words.items())
            }
        return compiled


def answer_stop_ids(
    words: list[str], tokenizer: PreTrainedTokenizerBase, shared: list[int], relation: str | None = None
) -> list[int]:
    """The downstream ids of the answer words the generator can write (one shared word each); warns with a count
    of the others."""
    shared_ids = set(shared)
    found: set[int] = set()
    missing = []
    for word in dict.fromkeys(words):
        ids = encode_fragment(tokenizer, word, True)
        if len(ids) == 1 and ids[0] in shared_ids:
            found.add(ids[0])
        else:
            missing.append(word)
    if missing:
        where = "" if relation is None else f" (relation {relation!r})"
        warnings.warn(
            f"{len(missing)} of {len(set(words))} answer_words{where} are not one word of the shared vocabulary, so "
            f"the generator cannot write them and they end no segment (e.g. {missing[:3]})",
            stacklevel=3,
        )
    return sorted(found)
