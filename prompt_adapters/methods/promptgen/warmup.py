"""A supervised start for PromptGen's generator: teach it to write given prompts before the end-to-end training.

An untrained generator writes whatever its pretraining continues the subject with ("Valeria Bruni Tedeschi is a
fictional character ..."), far below the relation's manual prompt. ``warm_up`` trains it, with teacher forcing, to
write the words of the manual template (and of any paraphrases given) around the answer slot and to stop there, for
the training examples, so the end-to-end training starts from prompts at least as good as the manual one.
"""

from __future__ import annotations

import functools
import random
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from prompt_adapters.methods.promptgen.model import PromptGenCollator, _decoder_only_prefix
from prompt_adapters.scoring import IGNORE
from prompt_adapters.template import encode_fragment


def template_words(template: str) -> tuple[list[str], list[str]] | None:
    """The words between ``[X]`` and ``[Y]`` and those after ``[Y]``; None when the template has text before
    ``[X]`` (PromptGen's prompt always starts after the subject, so it cannot restate such a template)."""
    if template.count("[X]") != 1 or template.count("[Y]") != 1 or not template.strip().startswith("[X]"):
        return None
    between, _, after = template.strip()[3:].partition("[Y]")
    if "[X]" in after:
        return None
    return between.split(), after.split()


def warm_up(
    model: nn.Module,
    collator: PromptGenCollator,
    examples: Sequence[Mapping[str, Any]],
    paraphrases: Mapping[str, Sequence[str]] | None = None,
    *,
    epochs: int = 3,
    learning_rate: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
    include_template: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the active adapter's generator to write, for every example, its manual template (``template``) and the
    ``paraphrases[template]`` as its prompt (one target per example and template).

    Each target is the template's words before the answer slot, then the stop token of ``stopping`` (unless the
    words fill ``num_before``), and for a masked or seq2seq downstream LM the words after it, then ``</s>``. The
    loss is the cross-entropy of each target over the shared vocabulary and the stop tokens, the choice the
    generator makes while writing. Targets the generator cannot write (text before ``[X]``, more words than
    ``num_before`` / ``num_after``, a word outside the shared vocabulary) are skipped and counted in a warning.
    With ``include_template=False`` an example's own template is no target, only its paraphrases (e.g. one prompt
    chosen per relation). Only the generator's trainable parameters change (all of them, or its LoRA weights).
    ``progress`` shows a bar over the steps (pass it on the main process only). Returns the number of targets, the
    skips by reason, the steps and the mean loss of the first and last epoch.
    """
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise ValueError(
            f"warm_up needs epochs >= 1, batch_size >= 1 and learning_rate > 0, got {epochs}, {batch_size}, "
            f"{learning_rate}"
        )
    state = getattr(model, "base_model", model).state
    name = state.active_name
    options, generator = state.options[name], state.generator[name]
    targets, skipped = _targets(examples, paraphrases or {}, collator, options, include_template)
    if skipped:
        warnings.warn(
            f"warm_up skipped {sum(skipped.values())} of {sum(skipped.values()) + len(targets)} targets the "
            f"generator cannot write: {dict(skipped)}",
            stacklevel=2,
        )
    if not targets:
        raise ValueError(f"warm_up has no target the generator can write ({len(examples)} examples); {dict(skipped)}")
    parameters = [parameter for parameter in generator.parameters() if parameter.requires_grad]
    if not parameters:
        raise ValueError(f"the generator of adapter {name!r} has no trainable parameter to warm up")
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    order = random.Random(seed)
    was_training = generator.training
    generator.train()
    losses: list[float] = []
    steps = 0
    bar = tqdm(total=epochs * -(-len(targets) // batch_size), disable=not progress, desc="warm-up", leave=False)
    try:
        for _ in range(epochs):
            order.shuffle(targets)
            total = 0.0
            for start in range(0, len(targets), batch_size):
                batch = targets[start : start + batch_size]
                loss = _loss(generator, collator, options, batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                steps += 1
                bar.update()
            losses.append(total / len(targets))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        bar.close()
        generator.train(was_training)
    return {"targets": len(targets), "skipped": dict(skipped), "steps": steps, "first_epoch_loss": losses[0],
            "last_epoch_loss": losses[-1]}


def unwritable_reason(model: nn.Module, collator: PromptGenCollator, template: str) -> str | None:
    """Why the active adapter's generator cannot write ``template`` as a warm-up target, or None when it can."""
    state = getattr(model, "base_model", model).state
    options = state.options[state.active_name]
    found = _template_ids(template, options, _shared_word_id(collator, options))
    return found if isinstance(found, str) else None


def _shared_word_id(collator: PromptGenCollator, options: dict[str, Any]) -> Callable[[str], int | None]:
    """A cached lookup of a word's generator id; None when the word is not one shared token."""
    shared = set(options["gen_ids"].tolist())

    @functools.cache
    def word_id(word: str) -> int | None:
        ids = encode_fragment(collator.generator_tokenizer, word, True)
        return ids[0] if len(ids) == 1 and ids[0] in shared else None

    return word_id


def _template_ids(
    template: str, options: dict[str, Any], word_id: Callable[[str], int | None]
) -> tuple[list[int], list[int]] | str:
    """The generator ids of the template's words before and after the slot, or the reason it cannot be written."""
    parts = template_words(template)
    if parts is None:
        return "text before [X]"
    before, after = parts[0], parts[1] if options["written_after"] else []
    if len(before) > options["m"] or len(after) > options["written_after"]:
        return "longer than num_before / num_after"
    ids = [word_id(word) for word in before + after]
    if None in ids:
        return "a word outside the shared vocabulary"
    return ids[: len(before)], ids[len(before) :]


def _targets(
    examples: Sequence[Mapping[str, Any]],
    paraphrases: Mapping[str, Sequence[str]],
    collator: PromptGenCollator,
    options: dict[str, Any],
    include_template: bool,
) -> tuple[list[tuple[Mapping[str, Any], list[int], list[int]]], Counter]:
    """(example, generator ids before the slot, ids after it) for each example and writable template."""
    word_id = _shared_word_id(collator, options)
    targets, skipped = [], Counter()
    for example in examples:
        own = [example["template"]] if include_template else []
        for template in dict.fromkeys([*own, *paraphrases.get(example["template"], ())]):
            found = _template_ids(template, options, word_id)
            if isinstance(found, str):
                skipped[found] += 1
            else:
                targets.append((example, *found))
    return targets, skipped


def _loss(
    generator: nn.Module,
    collator: PromptGenCollator,
    options: dict[str, Any],
    batch: list[tuple[Mapping[str, Any], list[int], list[int]]],
) -> torch.Tensor:
    """Teacher-forced cross-entropy of the batch's targets, read at the decoder positions ``generate`` writes: the
    row is the subject, the words before the slot, then (second segment) the mask token and the words after it."""
    inputs = collator.generator_inputs([example for example, _, _ in batch])
    device = next(generator.parameters()).device
    stop_before, stop_after = options["stop_ids"]
    common = options["gen_ids"].to(device)
    stops = [token for token in dict.fromkeys((stop_before, stop_after)) if token is not None]
    choices = torch.cat([common, torch.tensor(stops, dtype=torch.long, device=device)])
    index = {token: position for position, token in enumerate(choices.tolist())}
    rows, labels = [], []
    for (_, before, after), subject in zip(batch, inputs["generator_subject_ids"], strict=True):
        row = subject[subject >= 0].tolist()
        label = [IGNORE] * (len(row) - 1) + [index[token] for token in before]
        label.append(index[stop_before] if stop_before is not None and len(before) < options["m"] else IGNORE)
        row += before
        if options["written_after"]:  # the decoder reads the copied mask token at the answer slot
            row += [options["mask_id"], *after]
            label += [index[token] for token in after]
            written = stop_after is not None and len(after) < options["written_after"]
            label.append(index[stop_after] if written else IGNORE)
        rows.append(row)
        labels += label
    width = max(len(row) for row in rows)
    if options["decoder_only"]:
        body = torch.full((len(rows), width), -1, dtype=torch.long)
        for number, row in enumerate(rows):
            body[number, : len(row)] = torch.tensor(row)
        ids, mask = _decoder_only_prefix(inputs["generator_input_ids"], inputs["generator_attention_mask"],
                                         options["prefix_ids"], body)
        ids, mask = ids.to(device), mask.to(device)
        logits = generator(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        gathered = [logits[number, ids.shape[1] - len(row) :] for number, row in enumerate(rows)]
    else:
        prefix = options["prefix_ids"].tolist()
        pad = collator.generator_tokenizer.pad_token_id or 0
        decoder = torch.full((len(rows), len(prefix) + width), pad, dtype=torch.long)
        for number, row in enumerate(rows):
            decoder[number, : len(prefix) + len(row)] = torch.tensor(prefix + row)
        logits = generator(input_ids=inputs["generator_input_ids"].to(device),
                           attention_mask=inputs["generator_attention_mask"].to(device),
                           decoder_input_ids=decoder.to(device)).logits
        gathered = [logits[number, len(prefix) : len(prefix) + len(row)] for number, row in enumerate(rows)]
    restricted = torch.cat([part.index_select(-1, choices) for part in gathered]).float()
    return nn.functional.cross_entropy(restricted, torch.tensor(labels, device=device), ignore_index=IGNORE)
