"""Pretraining small BERT / GPT-2 / BART models from scratch on the FactWorld corpus (CPU, deterministic).

Memorising thousands of arbitrary facts takes many passes over the corpus (a 1,200-entity world
trained for 30 epochs stayed at chance), so the models are tiny, dropout is off and the learning rate
follows a high one-cycle schedule. The masked LM always masks the objects (plus 15% random tokens),
so every pass is a cloze question about every fact; the BART denoiser gets the same masking and
reconstructs the sentence; GPT-2 is trained as a plain next-token model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from prompt_adapters.factworld.corpus import Sentence
from prompt_adapters.factworld.tokenization import MAX_LENGTH

ModelKind = Literal["bert", "gpt2", "bart"]


@dataclass(frozen=True)
class TrainSpec:
    """Architecture and schedule of one pretrained model (``layers`` per stack for BART)."""

    layers: int
    hidden: int
    heads: int
    epochs: int
    batch_size: int
    lr: float
    mask_prob: float = 0.15
    weight_decay: float = 0.01
    init_std: float = 0.02
    adam_beta2: float = 0.999
    schedule: Literal["onecycle", "wsd"] = "onecycle"


def build_model(kind: ModelKind, tokenizer: PreTrainedTokenizerFast, spec: TrainSpec) -> PreTrainedModel:
    """A randomly initialised model of ``kind`` sized by ``spec`` for ``tokenizer``'s vocabulary."""
    common = {"vocab_size": len(tokenizer)}
    if kind == "bert":
        config = BertConfig(
            **common,
            hidden_size=spec.hidden,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            intermediate_size=4 * spec.hidden,
            max_position_embeddings=MAX_LENGTH,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=tokenizer.pad_token_id,
            initializer_range=spec.init_std,
        )
        return BertForMaskedLM(config)
    if kind == "gpt2":
        config = GPT2Config(
            **common,
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_positions=MAX_LENGTH,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            initializer_range=spec.init_std,
        )
        return GPT2LMHeadModel(config)
    if kind == "bart":
        config = BartConfig(
            **common,
            d_model=spec.hidden,
            encoder_layers=spec.layers,
            decoder_layers=spec.layers,
            encoder_attention_heads=spec.heads,
            decoder_attention_heads=spec.heads,
            encoder_ffn_dim=4 * spec.hidden,
            decoder_ffn_dim=4 * spec.hidden,
            max_position_embeddings=MAX_LENGTH,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
            init_std=spec.init_std,
        )
        return BartForConditionalGeneration(config)
    raise ValueError(f"unknown model kind {kind!r}, expected 'bert', 'gpt2' or 'bart'")


@dataclass
class EncodedCorpus:
    """Padded token ids of every sentence, with lengths and a mask of the object positions."""

    ids: torch.Tensor
    lengths: torch.Tensor
    objects: torch.Tensor
    special: torch.Tensor


def encode_corpus(tokenizer: PreTrainedTokenizerFast, sentences: list[Sentence]) -> EncodedCorpus:
    """Tokenize every sentence; each word must be exactly one token (checked), so objects are located by word index."""
    batch = tokenizer([s.text for s in sentences], add_special_tokens=True)["input_ids"]
    offset = len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    prefix = 1 if offset == 2 else 0
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
    objects = torch.zeros((len(batch), width), dtype=torch.bool)
    special = torch.ones((len(batch), width), dtype=torch.bool)
    for row, (sentence, token_ids) in enumerate(zip(sentences, batch, strict=True)):
        if len(token_ids) != len(sentence.words) + offset:
            raise ValueError(
                f"sentence {sentence.text!r} tokenizes to {tokenizer.convert_ids_to_tokens(token_ids)}, "
                "expected one token per word"
            )
        ids[row, : len(token_ids)] = torch.tensor(token_ids)
        special[row, prefix : prefix + len(sentence.words)] = False
        for index, _ in sentence.objects:
            objects[row, prefix + index] = True
    lengths = torch.tensor([len(t) for t in batch])
    return EncodedCorpus(ids=ids, lengths=lengths, objects=objects, special=special)


def _mask_tokens(
    ids: torch.Tensor,
    objects: torch.Tensor,
    special: torch.Tensor,
    mask_id: int,
    prob: float,
    low: int,
    vocab_size: int,
    generator: torch.Generator,
    bert_style: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objects always -> mask; other words with ``prob`` (BERT: 80% mask / 10% random / 10% kept).

    Returns the corrupted inputs and the boolean mask of corrupted positions.
    """
    draw = torch.rand(ids.shape, generator=generator)
    random_pos = (draw < prob) & ~special & ~objects
    chosen = objects | random_pos
    inputs = ids.clone()
    if bert_style:
        kind = torch.rand(ids.shape, generator=generator)
        replace = random_pos & (kind >= 0.8) & (kind < 0.9)
        inputs[replace] = torch.randint(low, vocab_size, ids.shape, generator=generator)[replace]
        inputs[objects | (random_pos & (kind < 0.8))] = mask_id
    else:
        inputs[chosen] = mask_id
    return inputs, chosen


def _step_loss(
    kind: ModelKind,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    ids: torch.Tensor,
    objects: torch.Tensor,
    special: torch.Tensor,
    attention: torch.Tensor,
    spec: TrainSpec,
    generator: torch.Generator,
) -> torch.Tensor:
    """The training loss of one batch for the model kind."""
    pad = tokenizer.pad_token_id
    if kind == "gpt2":
        labels = ids.masked_fill(attention == 0, -100)
        return model(input_ids=ids, attention_mask=attention, labels=labels).loss
    low = len(tokenizer.all_special_ids)
    inputs, chosen = _mask_tokens(
        ids, objects, special, tokenizer.mask_token_id, spec.mask_prob, low, len(tokenizer), generator, kind == "bert"
    )
    if kind == "bert":
        labels = ids.masked_fill(~chosen, -100)
        return model(input_ids=inputs, attention_mask=attention, labels=labels).loss
    labels = ids.masked_fill(ids == pad, -100)
    return model(input_ids=inputs, attention_mask=attention, labels=labels).loss


def _schedule(optimizer: torch.optim.Optimizer, spec: TrainSpec, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle (10% warm-up, cosine decay) or warm-up / stable / decay (10% up, flat, last 20% linear down)."""
    if spec.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=total, pct_start=0.1)
    warmup, decay = max(1, int(0.1 * total)), max(1, int(0.2 * total))

    def factor(step: int) -> float:
        return min((step + 1) / warmup, 1.0, (total - step) / decay)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain(
    kind: ModelKind,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    corpus: EncodedCorpus,
    spec: TrainSpec,
    seed: int = 0,
    position: int = 0,
    callback: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``spec.epochs`` with AdamW and a one-cycle schedule.

    Deterministic for a seed and thread count: batches and masks come from a seeded generator.
    ``position`` places the progress bar (one line per model when several train at once);
    ``callback`` is called with the epoch number after every epoch (e.g. to track memorisation).
    Returns the number of steps and epochs and the loss averaged over the last epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    model.train()
    n = corpus.ids.shape[0]
    total = spec.epochs * math.ceil(n / spec.batch_size)
    params = dict(model.named_parameters())
    no_decay = {name for name, p in params.items() if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name}
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for name, p in params.items() if name not in no_decay], "weight_decay": spec.weight_decay},
            {"params": [p for name, p in params.items() if name in no_decay], "weight_decay": 0.0},
        ],
        lr=spec.lr,
        betas=(0.9, spec.adam_beta2),
    )
    schedule = _schedule(optimizer, spec, total)
    epoch_loss = 0.0
    with tqdm(total=total, desc=f"pretrain {kind}", unit="step", mininterval=2.0, position=position) as bar:
        for epoch in range(1, spec.epochs + 1):
            order = torch.randperm(n, generator=generator)
            losses: list[float] = []
            for start in range(0, n, spec.batch_size):
                rows = order[start : start + spec.batch_size]
                width = int(corpus.lengths[rows].max())
                attention = (torch.arange(width)[None, :] < corpus.lengths[rows][:, None]).long()
                loss = _step_loss(
                    kind,
                    model,
                    tokenizer,
                    corpus.ids[rows, :width],
                    corpus.objects[rows, :width],
                    corpus.special[rows, :width],
                    attention,
                    spec,
                    generator,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(1)
                if len(losses) % 50 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}")
            epoch_loss = sum(losses) / len(losses)
            if callback is not None:
                callback(epoch)
    model.eval()
    return {"steps": total, "epochs": spec.epochs, "final_loss": epoch_loss}
