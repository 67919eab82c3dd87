"""PromptCollator: from (input, answer) pairs or dicts of named fields to a batch the adapted model scores.

    collate = PromptCollator(tokenizer, peft_model)
    batch = collate([("Dante", "Florence"), ("Obama", "Honolulu")])
    out = peft_model(**batch)          # out.loss, out.answer_log_probs (B, V or C), out.template_log_probs
    out.loss.backward()

It works as a ``data_collator`` for the HF Trainer (with ``remove_unused_columns=False``) and in any torch loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import BatchEncoding, PreTrainedTokenizerBase

from prompt_adapters.model_facts import model_max_positions
from prompt_adapters.rendering import RenderedInput, make_layout, render
from prompt_adapters.scoring import IGNORE
from prompt_adapters.template import ANSWER_SLOT, CompiledTemplate, encode_fragment
from prompt_adapters.validation import (
    check_candidates,
    check_known_tokens,
    check_no_special_tokens,
    check_template_words,
    check_text,
    check_tokenizer,
    control_token_ids,
)

#: keys accepted for the LAMA subject / object besides the template's own field names
FIELD_ALIASES = {"X": ("sub", "sub_label", "subject")}
#: example key naming the adapter of that example; a batch mixing adapters is passed on as ``adapter_names``
ADAPTER_KEY = "adapter"
ANSWER_KEYS = (ANSWER_SLOT, "obj", "obj_label", "answer", "object")


@dataclass(frozen=True)
class CheckedExample:
    """An example as the collator's door read and checked it, ready to render: its field values, one target
    sequence per choice (as long as the answer slot; IGNORE where unknown or padded) and the index of the right
    choice (None when unknown)."""

    values: dict[str, str]
    targets: list[list[int]]
    label: int | None


def _tuner(model: nn.Module) -> Any:
    """The PromptTuner behind a PeftModel (or the tuner itself)."""
    tuner = getattr(model, "base_model", model)
    if not hasattr(tuner, "state") or not hasattr(tuner, "peft_config"):
        raise TypeError(f"expected a PeftModel with a prompt adapter, got {type(model).__name__}")
    return tuner


class PromptCollator:
    """Renders examples with every template of one adapter and pads them into one batch.

    Rows are example-major: row ``b * K + t`` is example b under template t. With data-dependent mixture weights
    a second block of B * K rows scores the input fields. ``truncated_tokens`` counts input tokens cut to fit
    ``max_length`` so nothing is dropped silently.

    With ``answers="many"`` answers are token sequences: the answer slot holds ``answer_length`` tokens (default: the
    longest answer of the example), the model returns sequence log-probabilities, and an example with ``choices``
    (a list of answer texts) and ``label`` (the index of the right one) becomes C rows per template, scored as a
    multiple choice: row ``(b * C + c) * K + t``. Targets shorter than the slot are padded with IGNORE (``pad_answer=
    "ignore"``, PET's COPA) or with the pad token (``"pad"``, PET's WSC).

    Dict examples with an ``"adapter"`` key are rendered with that adapter's templates (examples without one use
    the collator's adapter): the batch then mixes adapters, each example's K_a x C rows in example order, query rows
    of data-dependent adapters after all of them, and ``adapter_names`` names each row's adapter (peft's per-row
    adapters), so ``model(**batch)`` runs every example with its own adapter.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: nn.Module,
        adapter_name: str | None = None,
        candidate_ids: Sequence[int] | torch.Tensor | None = None,
        max_length: int | None = None,
        answers: str = "one",
        pad_answer: str = "ignore",
    ) -> None:
        if answers not in ("one", "many"):
            raise ValueError(f"answers must be 'one' (single tokens) or 'many' (token sequences), got {answers!r}")
        if pad_answer not in ("ignore", "pad"):
            raise ValueError(f"pad_answer must be 'ignore' or 'pad', got {pad_answer!r}")
        tuner = _tuner(model)
        name = adapter_name or tuner.active_adapter
        self.adapter_name = name
        self._model = model
        self._options: dict[str, Any] = {
            "candidate_ids": candidate_ids, "max_length": max_length, "answers": answers, "pad_answer": pad_answer
        }
        self._collators: dict[str, PromptCollator] = {name: self}
        if name not in tuner.peft_config:
            raise ValueError(f"adapter {name!r} not found; available: {sorted(tuner.peft_config)}")
        config = tuner.peft_config[name]
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has no pad token; set one first (e.g. tokenizer.pad_token = "
                "tokenizer.eos_token)"
            )
        self.tokenizer = tokenizer
        self.templates: list[CompiledTemplate] = config.compiled()
        self.offsets: list[int] = tuner.state.offsets[name]
        check_tokenizer(config.tokenizer_fingerprint, tokenizer, f"PromptCollator for adapter {name!r}")
        self.layout = make_layout(tokenizer, tuner.model, config.lm_kind)
        self.data_dependent = tuner.state.settings[name]["data_dependent"]
        self.candidate_ids = None if candidate_ids is None else torch.as_tensor(candidate_ids, dtype=torch.long)
        check_template_words(self.templates, tokenizer)
        if self.candidate_ids is not None:
            check_candidates(self.candidate_ids, self.layout.vocab_size, tokenizer)
        self.max_length = self._max_length(max_length or config.max_length, tuner.model, tokenizer)
        self.fields = self.templates[0].fields
        self.answers = answers
        self.pad_answer = pad_answer
        self.truncated_tokens = 0
        self._fragments: dict[tuple[str, bool], list[int]] = {}
        self._field_space = {p.name: p.space_before for p in self.templates[0].pieces if p.kind == "field"}
        self._special_ids = control_token_ids(tokenizer)

    @staticmethod
    def _max_length(requested: Any, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int | None:
        """``requested`` checked against the positions the model has; by default, those positions."""
        limit = model_max_positions(model, tokenizer)
        if requested is None:
            return limit
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
            raise TypeError(f"max_length must be an int >= 1 or None, got {requested!r}")
        if limit is not None and requested > limit:
            raise ValueError(f"max_length={requested} is more than the {limit} positions this model and tokenizer "
                             f"take; expected max_length <= {limit}")
        return requested

    def encode(self, text: str, space_before: bool) -> list[int]:
        """Token ids of a fragment, cached for the current batch (K templates read the same fields and answers)."""
        key = (text, space_before)
        if key not in self._fragments:
            self._fragments[key] = encode_fragment(self.tokenizer, text, space_before)
        return self._fragments[key]

    # ------------------------------------------------------------------------------------------ the door

    def check_example(self, example: Any) -> CheckedExample:
        """Read ``example`` and check all of it once, before anything is rendered: its fields (non-blank text without
        special tokens), its answer or choices (text this tokenizer reads the same way under every template; one
        token with ``answers="one"``, at most the answer slot's length otherwise) and its label."""
        values, answer = self.split_example(example)
        if self.answers == "one":
            return CheckedExample(values, [[self.answer_id(answer)]], 0)
        targets, label = self.targets(example, answer)
        return CheckedExample(values, targets, label)

    def split_example(self, example: Any) -> tuple[dict[str, str], str | None]:
        """Field values and answer text of one example: a (input, answer) pair, (input,), or a dict."""
        if isinstance(example, Mapping):
            values = {}
            for name in self.fields:
                keys = (name, *FIELD_ALIASES.get(name, ()))
                found = next((k for k in keys if k in example), None)
                if found is None:
                    raise KeyError(
                        f"example {dict(example)!r} has none of the keys {list(keys)} for template field [{name}]"
                    )
                values[name] = example[found]
            answer = next((example[k] for k in ANSWER_KEYS if k in example), None)
            return self.check_fields(values, example), answer
        if isinstance(example, (tuple, list)) and 1 <= len(example) <= 2:
            if not self.fields:
                answer = example[1] if len(example) == 2 else "..."
                raise ValueError(
                    f"example {example!r} gives the input {example[0]!r}, but the templates have no input field "
                    f"(they read only [Y]); expected a dict holding the answer alone, e.g. {{'obj': {answer!r}}}"
                )
            if len(self.fields) != 1:
                raise ValueError(
                    f"example {example!r} is a pair, but the templates read {len(self.fields)} fields "
                    f"{list(self.fields)}; pass dicts keyed by field name"
                )
            values = self.check_fields({self.fields[0]: example[0]}, example)
            return values, (example[1] if len(example) == 2 else None)
        raise TypeError(f"an example must be a (input, answer) pair, (input,) or a dict, got {example!r}")

    def check_fields(self, values: dict[str, Any], example: Any) -> dict[str, str]:
        """Every field value is non-blank text without special-token text (e.g. "[MASK]" in a subject)."""
        for name, value in values.items():
            what = f"field [{name}] of example {example!r}"
            check_text(value, what)
            ids = self.encode(value, self._field_space[name])
            if not self._special_ids.isdisjoint(ids):
                check_no_special_tokens(ids, value, what, self.tokenizer)
        return values

    def answer_id(self, answer: str | None) -> int:
        """Single token id of the answer, the same under every template (IGNORE when there is none)."""
        if answer is None:
            return IGNORE
        ids = self.answer_tokens(answer)
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(list(ids))
            raise ValueError(
                f"answer {answer!r} is {len(ids)} tokens {pieces} for this tokenizer where one token is required; "
                "filter such facts or use answers='many'"
            )
        check_known_tokens(ids, answer, "answer", self.tokenizer)
        return ids[0]

    def answer_tokens(self, answer: str) -> list[int]:
        """Token ids of a (possibly multi-token) answer as read at the answer slot of every template.

        Refused: non-text or blank answers, special-token text, and answers made only of unknown tokens.
        """
        check_text(answer, "answer")
        forms = set()
        for template in self.templates:
            piece = next(p for p in template.pieces if p.kind == "answer")
            forms.add(tuple(self.encode(answer, piece.space_before)))
        if len(forms) != 1:
            raise ValueError(f"templates read answer {answer!r} as different tokens {sorted(forms)}")
        ids = list(forms.pop())
        if not ids:
            raise ValueError(f"answer {answer!r} tokenises to nothing")
        if not self._special_ids.isdisjoint(ids):
            check_no_special_tokens(ids, answer, "answer", self.tokenizer)
        if set(ids) == {self.tokenizer.unk_token_id}:
            check_known_tokens(ids, answer, "answer", self.tokenizer)
        return ids

    def choices(self, example: Any, answer: str | None) -> tuple[list[str | None], int | None]:
        """The candidate answers of an example and the index of the right one (None when unknown); an example
        without ``choices`` has one: its ``answer``."""
        if isinstance(example, Mapping) and "choices" in example:
            choices = list(example["choices"])
            label = example.get("label")
            repeated = sorted({c for c in choices if choices.count(c) > 1}, key=str)
            if repeated:
                raise ValueError(f"choices {choices} repeat {repeated}; expected distinct choices")
            if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
                raise TypeError(f"label must be an int index into choices {choices} (or None), got {label!r}")
            if label is not None and not 0 <= int(label) < len(choices):
                raise ValueError(f"label {label} is not an index into choices {choices}")
            return choices, None if label is None else int(label)
        return [answer], 0

    def targets(self, example: Any, answer: str | None) -> tuple[list[list[int]], int | None]:
        """One target sequence per choice, all as long as the answer slot, and the index of the right choice."""
        choices, label = self.choices(example, answer)
        tokens = [None if c is None else self.answer_tokens(c) for c in choices]
        known = [t for t in tokens if t is not None]
        requested = example.get("answer_length") if isinstance(example, Mapping) else None
        width = requested or max(map(len, known or [[0]]))
        filler = IGNORE if self.pad_answer == "ignore" else int(self.tokenizer.pad_token_id)
        sequences = []
        for choice, ids in zip(choices, tokens, strict=True):
            if ids is None:
                sequences.append([IGNORE] * width)
                continue
            if len(ids) > width:
                raise ValueError(f"answer {choice!r} has {len(ids)} tokens but the answer slot holds {width}")
            sequences.append(ids + [filler] * (width - len(ids)))
        return sequences, label

    # ------------------------------------------------------------------------------------------ rendering

    def render_example(self, checked: CheckedExample) -> list[RenderedInput]:
        """A checked example's input rows: one per choice and template, choices outermost."""
        return [
            render(template, checked.values, self.tokenizer, self.layout, offset, targets, self.max_length,
                   encode=self.encode)
            for targets in checked.targets
            for template, offset in zip(self.templates, self.offsets, strict=True)
        ]

    def render_queries(self, checked: CheckedExample) -> list[RenderedInput]:
        """A checked example's query rows, one per template: they score its input fields (the likelihood q_t(x) of
        data-dependent mixture weights)."""
        return [
            render(template, checked.values, self.tokenizer, self.layout, offset, [IGNORE], self.max_length, True,
                   self.encode)
            for template, offset in zip(self.templates, self.offsets, strict=True)
        ]

    # ------------------------------------------------------------------------------------------ batching

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        if len(examples) == 0:
            raise ValueError("cannot build a batch from an empty list of examples")
        if any(isinstance(example, Mapping) and ADAPTER_KEY in example for example in examples):
            return self.mixed(examples)
        refuse_unanswered(examples)
        self._fragments.clear()
        rows: list[RenderedInput] = []
        query_rows: list[RenderedInput] = []
        checked_examples = []
        for example in examples:
            checked = self.check_example(example)
            checked_examples.append(checked)
            rows.extend(self.render_example(checked))
            if self.data_dependent:
                query_rows.extend(self.render_queries(checked))
        rows.extend(query_rows)
        self.truncated_tokens += sum(row.truncated for row in rows[: len(rows) - len(query_rows)])
        batch = self.pad(rows)
        if self.answers == "many":
            _add_choices(batch, checked_examples)
        return batch

    def collator_for(self, name: Any) -> PromptCollator:
        """The collator of adapter ``name`` (same tokenizer and options), built once."""
        if name not in self._collators:
            tuner = _tuner(self._model)
            if not isinstance(name, str) or name not in tuner.peft_config:
                raise ValueError(
                    f"example names adapter {name!r}, which this model does not have; available: "
                    f"{sorted(tuner.peft_config)} (base-model rows have no template to render)"
                )
            self._collators[name] = PromptCollator(self.tokenizer, self._model, name, **self._options)
        return self._collators[name]

    def add_collator(self, collator: PromptCollator) -> None:
        """Render the examples of ``collator.adapter_name`` in mixed batches with ``collator`` (its own options).

        The batch has one candidate set and one answer kind, so they must be this collator's."""
        same_candidates = (collator.candidate_ids is None and self.candidate_ids is None) or (
            collator.candidate_ids is not None
            and self.candidate_ids is not None
            and torch.equal(collator.candidate_ids, self.candidate_ids)
        )
        if not same_candidates or collator.answers != self.answers:
            raise ValueError(
                f"the collator of adapter {collator.adapter_name!r} has other candidates or answers "
                f"({collator.answers!r}) than the collator of {self.adapter_name!r} ({self.answers!r}); a mixed batch "
                "has one candidate set and one answer kind"
            )
        self._collators[collator.adapter_name] = collator

    def mixed(self, examples: Sequence[Any]) -> dict[str, Any]:
        """A batch of examples of several adapters, each named by its ``"adapter"`` key (see the class docstring)."""
        return self.mixed_batch([
            (example.get(ADAPTER_KEY, self.adapter_name) if isinstance(example, Mapping) else self.adapter_name,
             example)
            for example in examples
        ])

    def mixed_batch(self, pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
        """A batch of ``(adapter name, example)`` pairs, each example rendered with its adapter's templates, with
        ``adapter_names`` naming each row's adapter (examples of any form: pairs, tuples or dicts)."""
        if len(pairs) == 0:
            raise ValueError("cannot build a batch from an empty list of examples")
        refuse_unanswered([example for _, example in pairs])
        rows: list[RenderedInput] = []
        names: list[str] = []
        query_rows: list[RenderedInput] = []
        query_names: list[str] = []
        checked_examples = []
        for name, example in pairs:
            collator = self.collator_for(name)
            collator._fragments.clear()
            checked = collator.check_example(example)
            checked_examples.append(checked)
            example_rows = collator.render_example(checked)
            rows.extend(example_rows)
            names.extend([collator.adapter_name] * len(example_rows))
            if collator.data_dependent:
                query_rows.extend(collator.render_queries(checked))
                query_names.extend([collator.adapter_name] * len(collator.templates))
        self.truncated_tokens += sum(row.truncated for row in rows)
        batch: dict[str, Any] = self.pad([*rows, *query_rows])
        if self.answers == "many":
            _add_choices(batch, checked_examples)
        batch["adapter_names"] = names + query_names
        return batch

    def pad(self, rows: Sequence[RenderedInput]) -> dict[str, torch.Tensor]:
        """The rows padded into one batch (right-padded; score targets padded with IGNORE)."""
        pad_id = int(self.tokenizer.pad_token_id)
        batch = {
            "input_ids": _pad([r.input_ids for r in rows], pad_id),
            "attention_mask": _pad([[1] * len(r.input_ids) for r in rows], 0),
            "score_positions": _pad([r.score_positions for r in rows], 0),
            "score_targets": _pad([r.score_targets for r in rows], IGNORE),
        }
        if self.layout.lm_kind == "seq2seq":
            decoder = [r.decoder_input_ids or [] for r in rows]
            batch["decoder_input_ids"] = _pad(decoder, pad_id)
            batch["decoder_attention_mask"] = _pad([[1] * len(d) for d in decoder], 0)
        if self.candidate_ids is not None:
            batch["candidate_ids"] = self.candidate_ids
        return batch

    # ------------------------------------------------------------------------------------------ raw text -> inputs

    def inputs(self, examples: str | Mapping[str, Any] | Sequence[Any], template: int = 0) -> BatchEncoding:
        """Model inputs for ``model(**inputs)`` and ``model.generate(**inputs)`` from raw text, through the adapter's
        template number ``template``: the prompt positions carry the adapter's soft vectors.

        ``examples`` is one input or a list of them: a string (templates with one field, e.g. ``"Dante"`` for
        ``[X] was born in [Y] .``), a tuple or a dict of named fields; answers in them are not read. Each row ends
        where the answer starts, so a causal LM continues at ``[Y]``; a masked LM has its mask token there; a seq2seq
        model gets the whole input and ``decoder_input_ids`` holding its decoder prompt (T5: the sentinel; BART: the
        input copied up to ``[Y]``). Rows are padded on ``tokenizer.padding_side`` (use ``"left"`` for batched
        generation with a causal LM, as for any HF model).

        Dict examples with an ``"adapter"`` key go through that adapter's template number ``template``, and the
        inputs then hold ``adapter_names`` (one per row) so each row runs with its own adapter.
        """
        if isinstance(examples, (str, Mapping)):
            examples = [examples]
        if len(examples) == 0:
            raise ValueError("cannot build inputs from an empty list of examples")
        mixed = any(isinstance(example, Mapping) and ADAPTER_KEY in example for example in examples)
        rows, names = [], []
        for example in examples:
            named = isinstance(example, Mapping) and ADAPTER_KEY in example
            collator = self.collator_for(example[ADAPTER_KEY]) if named else self
            rows.append(collator.render_input(example, template))
            names.append(collator.adapter_name)
        self.truncated_tokens += sum(row.truncated for row in rows)
        pad_id, left = int(self.tokenizer.pad_token_id), self.tokenizer.padding_side == "left"
        data = {
            "input_ids": _pad([r.input_ids for r in rows], pad_id, left),
            "attention_mask": _pad([[1] * len(r.input_ids) for r in rows], 0, left),
        }
        if self.layout.lm_kind == "seq2seq":
            data["decoder_input_ids"] = _pad([r.decoder_input_ids or [] for r in rows], pad_id, left)
            data["decoder_attention_mask"] = _pad([[1] * len(r.decoder_input_ids or []) for r in rows], 0, left)
        if mixed:
            data["adapter_names"] = names
        return BatchEncoding(data)

    def render_input(self, example: Any, template: int) -> RenderedInput:
        """One row of ``inputs``: ``example`` through template number ``template``, ending where the answer starts."""
        if not 0 <= template < len(self.templates):
            raise ValueError(f"template must be an index into adapter {self.adapter_name!r}'s {len(self.templates)} "
                             f"templates, got {template}")
        if isinstance(example, str) and len(self.fields) != 1:
            raise ValueError(
                f"input {example!r} is one text, but the templates read {len(self.fields)} fields "
                f"{list(self.fields)}; pass dicts keyed by field name ({{}} for templates that read only [Y])"
            )
        self._fragments.clear()
        values = {self.fields[0]: example} if isinstance(example, str) else self.split_example(example)[0]
        return render(self.templates[template], values, self.tokenizer, self.layout, self.offsets[template],
                      [IGNORE], self.max_length, encode=self.encode)


def gives_no_answer(example: Any) -> bool:
    """Whether ``example`` holds an answer that is None: ``(input, None)``, or a dict whose answer key is None.
    (``(input,)`` and dicts without an answer key are prediction inputs, not missing answers.)"""
    if isinstance(example, Mapping):
        key = next((key for key in ANSWER_KEYS if key in example), None)
        return "choices" not in example and key is not None and example[key] is None
    return isinstance(example, (tuple, list)) and len(example) == 2 and example[1] is None


def refuse_unanswered(examples: Sequence[Any]) -> None:
    """A batch whose every answer is None has no target: the model would return ``loss=None`` and
    ``loss.backward()`` would fail on None. Examples without any answer key are for prediction and pass."""
    if examples and all(gives_no_answer(example) for example in examples):
        raise ValueError(
            f"every answer of the batch is None ({len(examples)} example(s), e.g. {examples[0]!r}), so it has no "
            "target to train on and the model would return loss=None; expected answer text (filter examples with a "
            "missing answer), or for predictions examples without an answer: (input,) or a dict without an answer key"
        )


def _add_choices(batch: dict[str, Any], examples: Sequence[CheckedExample]) -> None:
    """Add ``num_choices`` (and ``choice_labels`` when there is a choice to make) for multiple-choice examples."""
    counts = {len(example.targets) for example in examples}
    if len(counts) != 1:
        raise ValueError(f"all examples of a batch need the same number of choices, got {sorted(counts)}")
    batch["num_choices"] = torch.tensor(counts.pop())
    if batch["num_choices"] > 1:
        batch["choice_labels"] = torch.tensor([IGNORE if example.label is None else example.label
                                               for example in examples])


def _pad(sequences: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(1, max(len(s) for s in sequences))
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        if sequence:
            start = width - len(sequence) if left else 0
            out[i, start : start + len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
    return out
