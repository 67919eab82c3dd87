"""Speed and memory: train-step time, peak memory and scoring throughput of the prompt methods, and joint training
of many relations against separate steps, in one run.

    python benchmarks/speed.py [--model-size base|small] [--device cpu|cuda] [--only all|methods|joint] \
        [--joint-relations 8,41] [--repeats N] [--max-repeats M] [--batch B] [--seq-len L] [--eval-batch E] \
        [--threads T] [--clock wall|cpu] [--allocator retain|system] [--out runs/speed]
    python benchmarks/speed.py --model DIR ...      # a pretrained masked or causal LM instead (e.g. SmolLM2)

Models are built from configs, nothing is downloaded: a BERT-base-sized masked LM (vocabulary 28996) and a
GPT-2-sized causal LM (``--model-size small``: tiny configs for quick runs and the test); ``--model DIR`` measures
one pretrained masked or causal LM from a local folder instead (e.g. SmolLM2-135M from benchmarks/models.py).
Every variant of one model shares the same frozen weights and the same examples. A warm-up pass over all variants
measures peak memory; then each round runs every variant once, round-robin with a rotating start; ratios whose
spread is wide get more rounds (bounded), and the report gives medians with their spread. The joint-training
comparison (``--only joint``) runs on the masked LM: one step of R P-tuning adapters in one batch against R separate
steps. See docs/speed.md for what each variant does and how to read the numbers.

The report goes to ``--out``: a folder (``speed.md`` in it, ``speed-<model folder>.md`` with --model; by default
runs/speed) or a ``.md`` file. ``--out benchmarks/results`` refreshes the published report of the same name.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import functools
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peft
import torch
import torch.nn.functional as F
import transformers
from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from prompt_adapters import (
    DeepPerturbConfig,
    MixturePromptConfig,
    PromptCollator,
    PromptGenCollator,
    PromptGenConfig,
    PTuningEncoderConfig,
)
from prompt_adapters.run_dir import positive_int
from prompt_adapters.testing import build_tokenizer
from prompt_adapters.tuner import PromptConfig

FAMILIES = ("bert", "gpt2")
#: LAMA's common-vocabulary candidate set has about 21k ids
CANDIDATES = 21_000
MIXTURE_SIZES = (4, 8)
#: K templates of one relation, all of the same length (three one-token words before [Y], for both tokenizers), so
#: mixture K runs K times the rows of the single soft prompt (the first template; its words are the soft vectors)
TEMPLATES = [
    "[X] was born in [Y] .",
    "[X] is native to [Y] .",
    "[X] was born at [Y] .",
    "[X] , native of [Y] .",
    "[X] is located in [Y] .",
    "[X] , born in [Y] .",
    "[X] was native to [Y] .",
    "[X] is born in [Y] .",
]
#: P-tuning keeps template words hard: pseudo tokens at the positions of the single prompt's soft words
PTUNING_TEMPLATES = {"masked": "[X] [P*3] [Y] [P]", "causal": "[X] [P*3] [Y]"}
FLOOR, PEFT_PT, PEFT_PTUNING, SINGLE, DEEP, PTUNING = (
    "floor (bare model, prompt by index_put)",
    "PEFT PROMPT_TUNING",
    "PEFT P_TUNING (MLP encoder)",
    "ours: single soft prompt (mixture K=1)",
    "ours: deep perturbation (K=1)",
    "ours: P-tuning encoder (MLP)",
)
PROMPTGEN = "ours: PromptGen (generator trained, m=10, n=5, leak rows)"
#: PromptGen's targets: its step against the P-tuning encoder's, and its peak memory against the floor's
PROMPTGEN_LIMIT = 3.0


def mixture_name(k: int) -> str:
    return f"ours: mixture K={k}"


# ------------------------------------------------------------------------------------------------ models and data


def model_config(family: str, size: str) -> BertConfig | GPT2Config:
    """BERT-base / GPT-2 default sizes, or a tiny config of the same family."""
    tiny = size == "small"
    if family == "bert":
        if tiny:
            return BertConfig(vocab_size=4096, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64)
        return BertConfig(vocab_size=28996)
    if tiny:
        return GPT2Config(vocab_size=4096, n_embd=32, n_layer=2, n_head=2, n_inner=64, bos_token_id=4095,
                          eos_token_id=4095)
    return GPT2Config()


def build_model(family: str, size: str, seed: int) -> PreTrainedModel:
    """A randomly initialised frozen model in eval mode (dropout off for every variant)."""
    torch.manual_seed(seed)
    cls = BertForMaskedLM if family == "bert" else GPT2LMHeadModel
    model = cls(model_config(family, size)).eval()
    model.requires_grad_(False)
    return model


def share_weights(source: PreTrainedModel) -> PreTrainedModel:
    """A new instance of ``source``'s class whose parameters and buffers are ``source``'s own tensors.

    Each variant gets its own modules (hooks and PEFT wrappers do not interfere) but no copy of the weights.
    """
    with torch.device("meta"):
        clone = type(source)(copy.deepcopy(source.config))
    tensors = [*source.named_parameters(remove_duplicate=False), *source.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        owner, _, attr = name.rpartition(".")
        setattr(clone.get_submodule(owner), attr, tensor)
    meta = [name for name, t in [*clone.named_parameters(), *clone.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"share_weights left tensors on the meta device: {meta}")
    return clone.eval()


@dataclass
class Family:
    """One frozen model with its tokenizer, examples and candidate set."""

    name: str
    title: str
    model: PreTrainedModel
    tokenizer: Any
    lm_kind: str
    train: list[tuple[str, str]]
    evaluation: list[tuple[str, str]]
    candidates: torch.Tensor
    seq_len: int


def single_token_words(tokenizer: Any) -> list[str]:
    """Whole words that are one token after a space (usable as answers and as subject words)."""
    words = sorted({t.lstrip("Ġ") for t in tokenizer.get_vocab() if t.lstrip("Ġ").isalpha() and len(t) > 3})
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def make_examples(words: list[str], count: int, subject_tokens: int, rng: random.Random) -> list[tuple[str, str]]:
    """(subject, answer) pairs; subjects of ``subject_tokens - 3 .. subject_tokens`` one-token words."""
    low = max(1, subject_tokens - 3)
    return [
        (" ".join(rng.choices(words, k=rng.randint(low, max(low, subject_tokens)))), rng.choice(words))
        for _ in range(count)
    ]


def load_pretrained(directory: str) -> tuple[PreTrainedModel, Any, str]:
    """A frozen pretrained masked or causal LM from ``directory``, its tokenizer and its kind."""
    config = AutoConfig.from_pretrained(directory)
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        model, lm_kind = AutoModelForMaskedLM.from_pretrained(directory), "masked"
    elif config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        model, lm_kind = AutoModelForCausalLM.from_pretrained(directory), "causal"
    else:
        raise ValueError(f"--model {directory}: model type {config.model_type!r} is neither a masked nor a causal LM")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().requires_grad_(False)
    return model, tokenizer, lm_kind


def build_family(name: str, args: argparse.Namespace) -> Family:
    """Model, tokenizer, examples whose single-template rows are at most ``seq_len`` tokens, and candidates."""
    if args.model is not None:
        model, tokenizer, lm_kind = load_pretrained(args.model)
    else:
        model = build_model(name, args.model_size, args.seed)
        tokenizer = build_tokenizer(name)
        lm_kind = "masked" if name == "bert" else "causal"
    rng = random.Random(args.seed)
    words = single_token_words(tokenizer)
    probe = PromptCollator(tokenizer, get_peft_model(share_weights(model), single_config(tokenizer, lm_kind)))
    overhead = probe([(words[0], words[0])])["input_ids"].shape[1] - 1
    subject = args.seq_len - overhead
    if subject < 1:
        raise ValueError(f"--seq-len {args.seq_len} leaves no room for a subject ({overhead} template tokens)")
    count = max(args.batch, args.eval_batch)
    examples = make_examples(words, count, subject, rng)
    vocab = model.get_input_embeddings().weight.shape[0]
    answers = {int(tokenizer(" " + a, add_special_tokens=False)["input_ids"][0]) for _, a in examples}
    others = [i for i in torch.randperm(vocab, generator=torch.Generator().manual_seed(args.seed)).tolist()
              if i not in answers]
    size = min(CANDIDATES, vocab * 3 // 4)
    candidates = torch.tensor(sorted([*answers, *others[: size - len(answers)]]))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    kind = "masked LM" if lm_kind == "masked" else "causal LM"
    if args.model is not None:
        title = f"{name} {kind} (pretrained, {params:.1f}M parameters, vocabulary {vocab})"
    else:
        base = "-base" if name == "bert" and args.model_size == "base" else ""
        label = {"bert": "BERT", "gpt2": "GPT-2"}[name] + base
        size = f"{params:.{0 if params >= 10 else 2}f}M parameters"
        title = f"{label} {kind} ({args.model_size}: {size}, vocabulary {vocab})"
    return Family(name, title, model, tokenizer, lm_kind, examples[: args.batch], examples[: args.eval_batch],
                  candidates, args.seq_len)


def single_config(tokenizer: Any, lm_kind: str) -> MixturePromptConfig:
    return MixturePromptConfig(templates=[template(TEMPLATES[0], lm_kind)], tokenizer=tokenizer)


def template(text: str, lm_kind: str) -> str:
    """Causal LMs read the answer as the next token, so their templates end at [Y]."""
    return text.removesuffix(" .") if lm_kind == "causal" else text


def save_generator(size: str, directory: Path, seed: int) -> Path:
    """A randomly initialised BART generator for PromptGen (``base``: BART-base sizes; ``small``: tiny) and its
    tokenizer, saved for ``from_pretrained``; the vocabulary is the test tokenizer's."""
    tokenizer = build_tokenizer("bart")
    sizes = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64} if size == "small" else {}
    config = BartConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id,
                        **{"d_model": 768, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 12,
                           "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
                           **sizes})
    torch.manual_seed(seed)
    BartForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------------------ measurements


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages created while active: the CPU analogue of ``torch.cuda.max_memory_allocated``.

    Every new storage an ATen op returns (forward, autograd backward and optimizer ops) is counted until it is
    freed; views of and in-place results on the op's inputs, and tensors that existed before (the frozen weights),
    are not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[weakref.ref, int] = {}
        self.live = 0
        self.peak = 0

    def _freed(self, ref: weakref.ref) -> None:
        self.live -= self.sizes.pop(ref)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                storage = tensor.untyped_storage()
                ref = weakref.ref(storage, self._freed)
                if ref not in self.sizes:
                    self.sizes[ref] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
        return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: glibc mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse, like a caching allocator; whether it took effect.

    By default glibc serves every block over 32 MB with its own mmap and unmaps it when freed, so a step whose
    activations exceed that size (GPT-2 at 128 rows: 50 MB per MLP activation) maps fresh pages and takes a page
    fault on each of them every step: system time that grows faster than the rows. Serving large blocks from the
    heap and never trimming it removes that cost for every variant alike. Not available outside glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


#: wall-clock time, or the CPU time of this process (not counting time other processes hold the cores)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float]) -> float:
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory ``fn`` allocates on top of what was allocated before (the weights)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with PeakTensorMemory() as tracker:
        fn()
    return tracker.peak


@dataclass
class Variant:
    """One way of running a train step (``optimizer`` set) or of scoring an evaluation batch.

    ``rounds`` maps each repetition round the variant ran in to its time, so ratios pair times of the same round.
    """

    family: str
    name: str
    forward: Callable[[], torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None
    collate: Callable[[], Any] | None = None
    facts: int = 0
    templates: int = 1
    rounds: dict[int, float] = field(default_factory=dict)
    collate_times: list[float] = field(default_factory=list)
    peak: int = 0

    @property
    def kind(self) -> str:
        return "scoring" if self.optimizer is None else "train"

    @property
    def times(self) -> list[float]:
        return list(self.rounds.values())

    def measure(self, device: torch.device, clock: Callable[[], float]) -> float:
        """Seconds of one ``run``."""
        return timed(self.run, device, clock)

    def run(self) -> torch.Tensor:
        """One train step (forward, backward, optimizer step) or one scoring pass without gradients."""
        if self.optimizer is None:
            with torch.no_grad():
                return self.forward()
        loss = self.forward()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @property
    def step(self) -> float:
        return statistics.median(self.times)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of ``batch`` on ``device`` (``adapter_names`` stays a list)."""
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def ours(family: Family, name: str, config: PromptConfig, device: torch.device) -> tuple[Variant, nn.Module]:
    """A train-step variant of one of our methods: get_peft_model + PromptCollator, loss from the model."""
    model = get_peft_model(share_weights(family.model), config).to(device)
    collate = PromptCollator(family.tokenizer, model)
    batch = to_device(collate(family.train), device)
    variant = Variant(family.name, name, lambda: model(**batch).loss, adam(model), lambda: collate(family.train),
                      templates=len(config.templates))
    return variant, model


class Floor:
    """The cheapest correct computation: prompt vectors put into ``inputs_embeds`` by ``index_put`` on the bare
    backbone, the LM head applied to the answer position only (and only to the candidates when scoring)."""

    def __init__(self, family: Family, table: torch.Tensor, device: torch.device) -> None:
        model = share_weights(family.model).to(device)
        self.vocab = model.get_input_embeddings().weight.shape[0]
        self.pad_id = int(family.tokenizer.pad_token_id)
        self.embed = model.get_input_embeddings()
        self.backbone = model.base_model
        predictions = getattr(getattr(model, "cls", None), "predictions", None)
        self.transform = predictions.transform if predictions is not None else nn.Identity()
        self.decoder = model.get_output_embeddings()
        self.prompt = nn.Parameter(table.detach().clone().to(device))
        self.candidates = family.candidates.to(device)
        self.candidate_weight = self.decoder.weight[self.candidates]
        bias = self.decoder.bias
        self.candidate_bias = None if bias is None else bias[self.candidates]

    def hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden state at the answer position of every row."""
        ids = batch["input_ids"]
        pseudo = ids >= self.vocab
        embeds = self.embed(ids.masked_fill(pseudo, self.pad_id))
        embeds = embeds.index_put((pseudo,), self.prompt[ids[pseudo] - self.vocab])
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
        return hidden[torch.arange(ids.shape[0], device=ids.device), batch["score_positions"][:, 0]]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.decoder(self.transform(self.hidden(batch)))
        return F.cross_entropy(logits.float(), batch["score_targets"][:, 0])

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = F.linear(self.transform(self.hidden(batch)), self.candidate_weight, self.candidate_bias)
        return torch.log_softmax(logits.float(), dim=-1)


def peft_batch(batch: dict[str, torch.Tensor], vocab: int, lm_kind: str, prompts: int) -> dict[str, torch.Tensor]:
    """Our rows without their prompt positions (PEFT prepends its virtual tokens instead), with HF labels.

    Masked LMs (PEFT's TOKEN_CLS model) take labels for the prepended positions too; causal LMs get the answer
    appended and labelled (PEFT's CAUSAL_LM model prepends the prompt labels itself).
    """
    rows, labels = [], []
    for ids, mask, position, target in zip(
        batch["input_ids"], batch["attention_mask"], batch["score_positions"][:, 0], batch["score_targets"][:, 0],
        strict=True,
    ):
        ids = ids[mask.bool()]
        kept = ids[ids < vocab].tolist()
        target = int(target)
        if lm_kind == "causal":
            rows.append([*kept, target])
            labels.append([-100] * len(kept) + [target])
        else:
            answer_at = int(position) - int((ids[: int(position)] >= vocab).sum())
            rows.append(kept)
            labels.append([-100] * (prompts + len(kept)))
            labels[-1][prompts + answer_at] = target
    width = max(len(r) for r in rows)
    label_width = max(len(lab) for lab in labels)
    return {
        "input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (label_width - len(lab)) for lab in labels]),
    }


def peft_variant(family: Family, name: str, config: peft.PeftConfig, batch: dict[str, torch.Tensor],
                 device: torch.device) -> Variant:
    model = get_peft_model(share_weights(family.model), config).to(device)
    batch = to_device(batch, device)
    return Variant(family.name, name, lambda: model(**batch).loss, adam(model))


def promptgen(family: Family, generator: Path, device: torch.device) -> Variant:
    """PromptGen with the paper's maximal prompt (m=10, n=5, fixed stopping) and leak rows; the generator trains."""
    config = PromptGenConfig(generator_name_or_path=str(generator), tokenizer=family.tokenizer, stopping="fixed")
    model = get_peft_model(share_weights(family.model), config).to(device)
    collate = PromptGenCollator(family.tokenizer, model)
    examples = [{"X": subject, "Y": answer, "template": TEMPLATES[0]} for subject, answer in family.train]
    batch = to_device(collate(examples), device)
    return Variant(family.name, PROMPTGEN, lambda: model(**batch).loss, adam(model), lambda: collate(examples))


def build_variants(
    family: Family, generator: Path, device: torch.device
) -> tuple[list[Variant], list[Variant], float]:
    """Train-step and scoring variants of one family, and the largest |floor - ours| over loss and scores."""
    tok, kind = family.tokenizer, family.lm_kind
    single, single_model = ours(family, SINGLE, single_config(tok, kind), device)
    table = single_model.base_model.state.table["default"]
    vocab = family.model.get_input_embeddings().weight.shape[0]
    train_batch = to_device(PromptCollator(tok, single_model)(family.train), device)
    floor = Floor(family, table, device)
    train = [Variant(family.name, FLOOR, lambda: floor.loss(train_batch), torch.optim.Adam([floor.prompt], lr=1e-3))]

    prompts = table.shape[0]
    task = "CAUSAL_LM" if kind == "causal" else "TOKEN_CLS"
    plain = peft_batch(train_batch, vocab, kind, prompts)
    hidden = family.model.config.hidden_size
    train += [
        peft_variant(family, PEFT_PT, PromptTuningConfig(task_type=task, num_virtual_tokens=prompts), plain, device),
        peft_variant(family, PEFT_PTUNING, PromptEncoderConfig(
            task_type=task, num_virtual_tokens=prompts, encoder_hidden_size=hidden), plain, device),
        single,
    ]
    for k in MIXTURE_SIZES:
        config = MixturePromptConfig(templates=[template(t, kind) for t in TEMPLATES[:k]], tokenizer=tok)
        train.append(ours(family, mixture_name(k), config, device)[0])
    deep = DeepPerturbConfig(templates=[template(TEMPLATES[0], kind)], tokenizer=tok)
    ptuning = PTuningEncoderConfig(templates=[PTUNING_TEMPLATES[kind]], encoder="mlp", tokenizer=tok)
    train += [ours(family, DEEP, deep, device)[0], ours(family, PTUNING, ptuning, device)[0]]
    train.append(promptgen(family, generator, device))

    scorer = PromptCollator(tok, single_model, candidate_ids=family.candidates)
    eval_batch = to_device(scorer(family.evaluation), device)
    n = len(family.evaluation)
    evaluation = [
        Variant(family.name, FLOOR, lambda: floor.scores(eval_batch), facts=n),
        Variant(family.name, SINGLE, lambda: single_model(**eval_batch).answer_log_probs, facts=n,
                collate=lambda: scorer(family.evaluation)),
    ]
    with torch.no_grad():
        gap = max(float((floor.loss(train_batch) - single_model(**train_batch).loss).abs()),
                  float((evaluation[0].forward() - evaluation[1].forward()).abs().max()))
    return train, evaluation, gap


# ------------------------------------------------------------------------------------------------ joint training

#: P-tuning's LAMA protocol: batch 8 per relation, pseudo tokens around the subject and the answer, LSTM encoder
JOINT_BATCH = 8
JOINT_TEMPLATES = {"masked": "[P*3] [X] [P*3] [Y] [P*3]", "causal": "[P*3] [X] [P*3] [Y]"}
JOINT, SEPARATE = "joint step", "separate steps"


class JointComparison:
    """R P-tuning adapters (one per relation) on one frozen model, each with its own Adam optimiser (fused on a GPU,
    as ``fit_joint``'s) and 8 examples.

    A joint step runs the 8·R rows in one forward with per-row adapters (``adapter_names``), backpropagates the sum
    of the per-adapter losses and steps every optimiser (what ``fit_joint`` does); the separate steps make each
    adapter active in turn and run forward, backward and its optimiser step on its own batch of 8 (what R separate
    ``fit`` runs do). Both act on the same adapters, so every step of either kind is an ordinary training step.
    """

    def __init__(self, family: Family, relations: int, device: torch.device, seed: int) -> None:
        tok, kind = family.tokenizer, family.lm_kind
        self.names = [f"relation{index}" for index in range(relations)]
        config = PTuningEncoderConfig(templates=[JOINT_TEMPLATES[kind]], encoder="lstm", tokenizer=tok)
        torch.manual_seed(seed)
        model = get_peft_model(share_weights(family.model), config, adapter_name=self.names[0])
        for name in self.names[1:]:
            model.add_adapter(name, config)
        self.model = model.to(device)
        self.tuner = self.model.base_model
        self.params: dict[str, list[torch.Tensor]] = {}
        for name in self.names:
            self.tuner.set_adapter(name)
            self.params[name] = [p for p in self.model.parameters() if p.requires_grad]
        # fused on a GPU, as prompt_adapters.training builds its optimisers; both variants step these same ones
        self.optimizers = {name: torch.optim.Adam(self.params[name], lr=1e-3, fused=device.type == "cuda")
                           for name in self.names}
        collators = {name: PromptCollator(tok, self.model, adapter_name=name, candidate_ids=family.candidates)
                     for name in self.names}
        first = collators[self.names[0]]
        for collator in list(collators.values())[1:]:
            first.add_collator(collator)
        examples = joint_examples(family, first, relations * JOINT_BATCH, seed)
        self.examples = {name: examples[i * JOINT_BATCH : (i + 1) * JOINT_BATCH] for i, name in enumerate(self.names)}
        pairs = [(name, example) for name in self.names for example in self.examples[name]]
        self.joint_batch = to_device(first.mixed_batch(pairs), device)
        self.separate_batches = {name: to_device(collators[name](self.examples[name]), device) for name in self.names}
        self.rows = len(pairs)

    def _train_all(self) -> None:
        """Every adapter's parameters trainable (``set_adapter`` leaves only the active adapter's)."""
        for params in self.params.values():
            for param in params:
                param.requires_grad_(True)

    def joint_step(self) -> dict[str, torch.Tensor]:
        """One joint step; each adapter's loss."""
        self._train_all()
        return self._joint()

    def _joint(self) -> dict[str, torch.Tensor]:
        out = self.model(**self.joint_batch)
        out.loss.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {name: loss.detach() for name, loss in out.adapter_losses.items()}

    def separate_step(self, name: str) -> torch.Tensor:
        """One step of adapter ``name`` alone (made active first); its loss."""
        self.tuner.set_adapter(name)
        return self._separate(name)

    def _separate(self, name: str) -> torch.Tensor:
        loss = self.model(**self.separate_batches[name]).loss
        loss.backward()
        self.optimizers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)
        return loss.detach()

    def separate_steps(self) -> dict[str, torch.Tensor]:
        """One step of every adapter alone; each adapter's loss."""
        return {name: self.separate_step(name) for name in self.names}

    def timed_joint(self, device: torch.device, clock: Callable[[], float]) -> float:
        self._train_all()
        return timed(self._joint, device, clock)

    def timed_separate(self, device: torch.device, clock: Callable[[], float]) -> float:
        """Seconds of the R steps, each timed after its ``set_adapter`` (a separate run sets its adapter once)."""
        total = 0.0
        for name in self.names:
            self.tuner.set_adapter(name)
            total += timed(functools.partial(self._separate, name), device, clock)
        return total


def joint_examples(family: Family, collator: PromptCollator, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (subject, answer) pairs with rows of at most ``--seq-len`` tokens and answers among the candidates."""
    rng = random.Random(seed + 1)
    tok = family.tokenizer
    candidates = set(family.candidates.tolist())
    words = single_token_words(tok)
    answers = [w for w in words if tok(" " + w, add_special_tokens=False)["input_ids"][0] in candidates]
    overhead = collator([(words[0], answers[0])])["input_ids"].shape[1] - 1
    subjects = make_examples(words, count, max(1, family.seq_len - overhead), rng)
    return [(subject, rng.choice(answers)) for subject, _ in subjects]


@dataclass
class JointVariant(Variant):
    """The joint step or the R separate steps of one JointComparison, timed like the other variants."""

    comparison: JointComparison | None = None
    joint: bool = True

    @property
    def kind(self) -> str:
        return "joint"

    @property
    def relations(self) -> int:
        return len(self.comparison.names)

    def measure(self, device: torch.device, clock: Callable[[], float]) -> float:
        comparison = self.comparison
        return comparison.timed_joint(device, clock) if self.joint else comparison.timed_separate(device, clock)

    def run(self) -> torch.Tensor:
        losses = self.comparison.joint_step() if self.joint else self.comparison.separate_steps()
        return torch.stack(list(losses.values())).sum()


def joint_name(relations: int, joint: bool) -> str:
    return f"{JOINT if joint else SEPARATE}, R={relations}"


def build_joint_variants(family: Family, relation_counts: Sequence[int], device: torch.device,
                         seed: int) -> list[Variant]:
    """A joint and a separate variant for every R, on ``family``'s frozen weights."""
    variants: list[Variant] = []
    for relations in relation_counts:
        comparison = JointComparison(family, relations, device, seed)
        for joint in (True, False):
            variants.append(JointVariant(family.name, joint_name(relations, joint), lambda: torch.zeros(()),
                                         facts=comparison.rows, comparison=comparison, joint=joint))
    return variants


# ------------------------------------------------------------------------------------------------ report


def machine(device: torch.device) -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = (f"{cpu}; {os.cpu_count()} logical cores ({usable} usable); torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op thread(s); transformers {transformers.__version__}; "
            f"peft {peft.__version__}; Python {platform.python_version()}")
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


CLOCK_TEXT = {"wall": "times are wall-clock", "cpu": "times are CPU time of the benchmark process"}


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def mb(size: float) -> str:
    return f"{size / 2**20:,.1f}"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}×"


def spread(times: Sequence[float]) -> str:
    return f"{ms(min(times))}–{ms(max(times))}"


def quartiles(samples: Sequence[float]) -> tuple[float, float]:
    """First and third quartile (inclusive method; a single sample is both)."""
    if len(samples) < 2:
        return samples[0], samples[0]
    first, _, third = statistics.quantiles(samples, n=4, method="inclusive")
    return first, third


def paired_ratios(numerator: Variant, denominator: Variant) -> list[float]:
    """``numerator / denominator`` time of every round both ran in: a round's load affects both alike."""
    return [numerator.rounds[r] / denominator.rounds[r] for r in sorted(numerator.rounds.keys() & denominator.rounds)]


@dataclass
class Check:
    """One target of the issue: measured ratio against its limit.

    A timing ratio keeps its per-round ``samples`` (the value is their median) and the variants it pairs; its
    spread is the interquartile range of the samples. A memory ratio has no samples (it does not vary).
    """

    what: str
    family: str
    value: float
    limit: float
    at_least: bool = False
    samples: list[float] | None = None
    variants: tuple[Variant, ...] = field(default=(), repr=False)

    @classmethod
    def timing(cls, what: str, family: str, numerator: Variant, denominator: Variant, limit: float,
               at_least: bool = False) -> Check:
        """The ratio of two variants' times, from the rounds both ran in."""
        samples = paired_ratios(numerator, denominator)
        return cls(what, family, statistics.median(samples), limit, at_least, samples, (numerator, denominator))

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def relative_spread(self) -> float:
        """Interquartile range over the median (0 without samples)."""
        if not self.samples:
            return 0.0
        first, third = quartiles(self.samples)
        return (third - first) / self.value

    @property
    def crosses_limit(self) -> bool:
        """Whether the limit lies inside the interquartile range: this run does not decide the target."""
        if not self.samples:
            return False
        first, third = quartiles(self.samples)
        return first <= self.limit <= third

    def unsettled(self, tolerance: float) -> bool:
        """Whether more rounds are needed: the spread crosses the limit or exceeds ``tolerance`` of the median."""
        return self.crosses_limit or self.relative_spread > tolerance

    def row(self) -> str:
        sign = "≥" if self.at_least else "≤"
        verdict = "PASS" if self.passed else "FAIL"
        if self.crosses_limit:
            verdict += " (limit inside the spread)"
        if self.samples:
            first, third = quartiles(self.samples)
            spread_cells = f"{first:.2f}–{third:.2f}× | {self.relative_spread:.0%} | {len(self.samples)}"
        else:
            spread_cells = "– | – | –"
        limit = f"{sign} {self.limit:.2f}×"
        return f"| {self.what} | {self.family} | {self.value:.2f}× | {spread_cells} | {limit} | {verdict} |"


def by_kind(variants: list[Variant], family: str) -> tuple[dict[str, Variant], dict[str, Variant]]:
    """The train-step and the scoring variants of ``family``, by name."""
    mine = [v for v in variants if v.family == family]
    return ({v.name: v for v in mine if v.kind == "train"}, {v.name: v for v in mine if v.kind == "scoring"})


def checks(family: str, train: dict[str, Variant], evaluation: dict[str, Variant]) -> list[Check]:
    if not train:
        return []
    floor, single, peft_pt = train[FLOOR], train[SINGLE], train[PEFT_PT]
    out = [
        Check.timing("single soft prompt step / PEFT PROMPT_TUNING", family, single, peft_pt, 0.9),
        Check.timing("single soft prompt step / floor", family, single, floor, 1.05),
    ]
    for k in MIXTURE_SIZES:
        out.append(Check.timing(f"mixture K={k} step / single", family, train[mixture_name(k)], single, 1.1 * k))
    out.append(Check.timing("deep step / single", family, train[DEEP], single, 1.1))
    # throughput ratio = floor time / single time
    out.append(Check.timing("scoring throughput / floor", family, evaluation[FLOOR], evaluation[SINGLE], 0.95,
                            at_least=True))
    for name, variant in train.items():
        if name.startswith("ours") and name != PROMPTGEN:
            k = variant.templates
            rows = f", B·{k} rows" if k > 1 else ""
            what = f"peak memory / floor ({name.removeprefix('ours: ')}{rows})"
            out.append(Check(what, family, variant.peak / floor.peak, 1.1 * k))
    if PROMPTGEN in train:  # a generator of about 100M parameters trains: its gradients and Adam state count
        out.append(Check.timing("PromptGen step / P-tuning encoder step", family, train[PROMPTGEN], train[PTUNING],
                                PROMPTGEN_LIMIT))
        out.append(Check("peak memory / floor (PromptGen)", family, train[PROMPTGEN].peak / floor.peak,
                         PROMPTGEN_LIMIT))
    return out


#: the issue's joint-training targets: joint rows/s over separate rows/s, on CPUs (every R) and on a GPU (R = 41)
JOINT_TARGETS = {"cpu": 1.5, "cuda": 8.0}
JOINT_GPU_RELATIONS = 41


def joint_pairs(variants: list[Variant], family: str) -> list[tuple[JointVariant, JointVariant]]:
    """(joint, separate) variant pairs of ``family``, by R."""
    mine = {v.name: v for v in variants if v.family == family and isinstance(v, JointVariant)}
    counts = dict.fromkeys(v.relations for v in mine.values())
    return [(mine[joint_name(r, True)], mine[joint_name(r, False)]) for r in counts]


def joint_checks(family: str, variants: list[Variant], device: torch.device) -> list[Check]:
    out = []
    for joint, separate in joint_pairs(variants, family):
        relations = joint.relations
        if device.type == "cuda" and relations != JOINT_GPU_RELATIONS:
            continue
        # rows/s ratio = separate time / joint time (the same rows)
        out.append(Check.timing(f"joint / separate rows per second, R={relations}", family, separate, joint,
                                JOINT_TARGETS[device.type], at_least=True))
    return out


def settle(
    run_round: Callable[[int, list[Variant] | None], None],
    current_checks: Callable[[], list[Check]],
    first: int,
    most: int,
    tolerance: float,
) -> int:
    """Run ``first`` rounds of every variant, then rounds of only the variants behind unsettled ratios (see
    ``Check.unsettled``) until none is left or ``most`` rounds ran. ``run_round(index, variants)`` runs round
    ``index`` of ``variants`` (None: all). Returns the number of rounds run."""
    for index in range(first):
        run_round(index, None)
    rounds = first
    while rounds < most:
        wide = {id(v): v for check in current_checks() if check.unsettled(tolerance) for v in check.variants}
        if not wide:
            break
        run_round(rounds, list(wide.values()))
        rounds += 1
    return rounds


def joint_report(pairs: list[tuple[JointVariant, JointVariant]], device: torch.device) -> list[str]:
    """The joint-training table: rows/s of one joint step against R separate steps, with peak memory."""
    lines = [
        f"### Joint training (P-tuning LAMA protocol: R LSTM-encoder adapters, batch {JOINT_BATCH} per relation)",
        "",
        f"One forward of {JOINT_BATCH}·R rows with per-row adapters, the summed per-adapter losses backpropagated and "
        f"every adapter's Adam step, against R steps of {JOINT_BATCH} rows with each adapter active in turn.",
        "",
        "| R | rows | joint step ms | min–max | R separate steps ms | min–max | joint rows/s | separate rows/s "
        "| joint / separate | interquartile range | joint peak MB | separate peak MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for joint, separate in pairs:
        samples = paired_ratios(separate, joint)
        first, third = quartiles(samples)
        lines.append(
            f"| {joint.relations} | {joint.facts} | {ms(joint.step)} | {spread(joint.times)} | {ms(separate.step)} "
            f"| {spread(separate.times)} | {joint.facts / joint.step:,.1f} | {separate.facts / separate.step:,.1f} "
            f"| {statistics.median(samples):.2f}× | {first:.2f}–{third:.2f}× | {mb(joint.peak)} | {mb(separate.peak)} |"
        )
    memory = "torch.cuda.max_memory_allocated above" if device.type == "cuda" else "tensor storages allocated beyond"
    lines += ["", f"Peak memory: {memory} the weights, the adapters and their Adam state, in the step after the "
              "warm-up (activations and gradients; separate: the largest of the R steps).", ""]
    return lines


def method_report(train: dict[str, Variant], evaluation: dict[str, Variant], gap: float,
                  args: argparse.Namespace) -> list[str]:
    """The train-step and scoring tables of one model."""
    floor, single, peft_pt = train[FLOOR], train[SINGLE], train[PEFT_PT]
    lines = [
        f"Floor and ours compute the same loss and scores (largest difference {gap:.1e}).",
        "",
        "### Train step (forward + backward + Adam step)",
        "",
        "| variant | step ms | min–max | collate ms | peak MB | / PEFT PROMPT_TUNING | / floor | / single | "
        "peak / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in train.items():
        collate = ms(statistics.median(v.collate_times)) if v.collate_times else "–"
        versus_single = ratio(v.step, single.step) if name.startswith("ours") else "–"
        lines.append(
            f"| {name} | {ms(v.step)} | {spread(v.times)} | {collate} | {mb(v.peak)} "
            f"| {ratio(v.step, peft_pt.step)} | {ratio(v.step, floor.step)} | {versus_single} "
            f"| {ratio(v.peak, floor.peak)} |"
        )
    lines += [
        "",
        f"### Scoring ({args.eval_batch} facts per batch, log-probabilities over the candidates, no gradients)",
        "",
        "| variant | batch ms | min–max | collate ms | facts/s | peak MB | throughput / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in evaluation.items():
        collate = ms(statistics.median(v.collate_times)) if v.collate_times else "–"
        lines.append(
            f"| {name} | {ms(v.step)} | {spread(v.times)} | {collate} | {v.facts / v.step:,.1f} | {mb(v.peak)} | "
            f"{ratio(evaluation[FLOOR].step, v.step)} |"
        )
    lines.append("")
    return lines


def render_report(families: list[Family], variants: list[Variant], gaps: dict[str, float], all_checks: list[Check],
                  args: argparse.Namespace, argv: list[str], device: torch.device, header: dict[str, str]) -> str:
    lines = [
        "# Speed and memory",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/speed.py', *argv])}`",
        "",
        f"Machine: {header['machine']}. Load average (1 min) at start {header['load_start']}, at end "
        f"{header['load_end']}; total run time {header['elapsed']}.",
        "",
        "Settings:",
        "",
        f"- device {device.type}; {CLOCK_TEXT[args.clock]}; {args.repeats} interleaved repetitions after one warm-up "
        f"pass, then up to {args.max_repeats} in all for the variants behind a ratio whose interquartile range "
        f"crosses its limit or exceeds {args.spread_tolerance:.0%} of its median ({header['rounds']} rounds ran); "
        "times are medians (min–max beside them); the tables divide median times, the targets and the joint "
        "comparison take the median of the per-round ratios, with their interquartile range;",
    ]
    if args.only != "joint":
        lines += [
            f"- train batch {args.batch} examples (mixture K: {args.batch}·K rows), rows of at most {args.seq_len} "
            f"tokens; scoring batch {args.eval_batch} facts over {len(families[0].candidates):,} candidate ids;",
            "- peak memory of the first step (the warm-up): "
            + ("torch.cuda.max_memory_allocated above what was allocated before it" if device.type == "cuda" else
               "tensor storages it allocates, counted by a TorchDispatchMode")
            + ": activations, gradients and Adam state, not the weights;",
            "- collate: building the batch from (subject, answer) strings with PromptCollator, not part of the step "
            "time;",
        ]
    if args.only != "methods":
        relations = ", ".join(str(r) for r in args.joint_relations)
        lines.append(f"- joint training: R = {relations} relations, {JOINT_BATCH} examples each, rows of at most "
                     f"{args.seq_len} tokens, answers scored over {len(families[0].candidates):,} candidate ids;")
    lines += [f"- memory allocator: {header['allocator']}.", ""]
    for family in families:
        train, evaluation = by_kind(variants, family.name)
        pairs = joint_pairs(variants, family.name)
        if not train and not pairs:
            continue
        lines += [f"## {family.title}", ""]
        if train:
            lines += method_report(train, evaluation, gaps[family.name], args)
        if pairs:
            lines += joint_report(pairs, device)
    lines += [
        "## Targets",
        "",
        "| target | model | measured | interquartile range | IQR / median | rounds | limit | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *[check.row() for check in all_checks],
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def relation_counts(text: str) -> list[int]:
    """``--joint-relations``: comma-separated numbers of relations (adapters), each >= 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(
            f"expected distinct numbers >= 1 separated by commas (e.g. 8,41), got {text!r}"
        )
    return counts


PARTS = ("all", "methods", "joint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="base", choices=("base", "small"))
    parser.add_argument("--model", default=None,
                        help="a local folder with a pretrained masked or causal LM to measure instead of the configs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--only", default="all", choices=PARTS,
                        help="methods: the train-step and scoring tables only; joint: the joint-training comparison "
                        "only (the masked LM, or --model)")
    parser.add_argument("--family", default=None, choices=FAMILIES, action="append",
                        help="measure only this built model (repeatable; default: every one); e.g. --family gpt2")
    parser.add_argument("--joint-relations", type=relation_counts, default=[8, 41],
                        help="numbers of relations R of the joint-training comparison (default 8,41)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repetitions of every variant")
    parser.add_argument("--max-repeats", type=positive_int, default=None,
                        help="most repetitions of the variants behind a ratio whose spread is wide (default 3x "
                        "--repeats)")
    parser.add_argument("--spread-tolerance", type=float, default=0.05,
                        help="a ratio's interquartile range over its median above which more repetitions run")
    parser.add_argument("--batch", type=positive_int, default=16, help="training examples per step")
    parser.add_argument("--seq-len", type=positive_int, default=32,
                        help="longest row of the single template, in tokens")
    parser.add_argument("--eval-batch", type=positive_int, default=32, help="facts per scoring batch")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="cpu: CPU time of this process, robust to other processes on a shared machine when "
                        "--threads 1 (CPU devices only)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 gives stable timings on a shared CPU")
    parser.add_argument("--allocator", default="retain", choices=("retain", "system"),
                        help="retain (CPU, glibc): freed memory is kept for reuse, as a caching allocator does; "
                        "system: glibc's defaults, which map and unmap every block over 32 MB (see docs/speed.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/speed",
                        help="folder of the markdown report (speed.md, or speed-<model folder>.md with --model), or "
                        "a .md file; benchmarks/results refreshes the published report")
    args = parser.parse_args(argv)
    if args.model is not None and not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: the folder does not exist; expected a local folder with a pretrained "
                     "masked or causal LM (config.json, weights, tokenizer files)")
    if args.max_repeats is None:
        args.max_repeats = 3 * args.repeats
    if args.max_repeats < args.repeats:
        parser.error(f"--max-repeats {args.max_repeats} is below --repeats {args.repeats}")
    if not 0 < args.spread_tolerance < 1:
        parser.error(f"--spread-tolerance must lie between 0 and 1, got {args.spread_tolerance}")
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU work; time GPU runs with --clock wall")
    return args


def report_path(out: str, model: str | None) -> Path:
    """The report file of ``--out``: the .md file itself, or ``speed.md`` / ``speed-<model folder>.md`` in a folder."""
    path = Path(out)
    if path.suffix == ".md":
        return path
    return path / (f"speed-{Path(model).name}.md" if model is not None else "speed.md")


def run_round(variants: list[Variant], index: int, device: torch.device, clock: Callable[[], float]) -> None:
    """Round ``index``: every variant once, in turn, starting at a position that rotates with the round."""
    shift = index % len(variants)
    for variant in variants[shift:] + variants[:shift]:
        variant.rounds[index] = variant.measure(device, clock)
        if variant.collate is not None:
            variant.collate_times.append(timed(variant.collate, device, clock))


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    allocator = "torch's CUDA caching allocator" if device.type == "cuda" else "system malloc defaults"
    if args.allocator == "retain" and device.type == "cpu":
        kept = retain_freed_memory()
        allocator = "malloc keeps freed memory (mallopt)" if kept else "system malloc defaults (mallopt unavailable)"
    started = time.perf_counter()
    load_start = f"{os.getloadavg()[0]:.1f}"
    if args.model is not None:
        names = [Path(args.model).name]
    else:
        names = list(FAMILIES[:1] if args.only == "joint" else args.family or FAMILIES)  # joint: the masked LM
    families = [build_family(name, args) for name in names]
    variants: list[Variant] = []
    gaps: dict[str, float] = {}
    if args.only in ("all", "methods"):
        with tempfile.TemporaryDirectory() as directory:
            generator = save_generator(args.model_size, Path(directory), args.seed)  # PromptGen's, for every family
            for family in families:
                train, evaluation, gaps[family.name] = build_variants(family, generator, device)
                variants += train + evaluation
    if args.only in ("all", "joint"):
        variants += build_joint_variants(families[0], args.joint_relations, device, args.seed)
    for variant in tqdm(variants, desc="warm-up and memory", leave=False):
        if isinstance(variant, JointVariant):
            variant.run()  # creates the Adam state: the peak is a step's activations and gradients
        variant.peak = peak_bytes(variant.run, device)
    clock = CLOCKS[args.clock]

    def all_checks() -> list[Check]:
        found = [check for family in families for check in checks(family.name, *by_kind(variants, family.name))]
        return found + joint_checks(families[0].name, variants, device)

    bar = tqdm(total=args.repeats, desc="repetitions", leave=False)

    def one_round(index: int, subset: list[Variant] | None) -> None:
        run_round(variants if subset is None else subset, index, device, clock)
        bar.update(1)

    rounds = settle(one_round, all_checks, args.repeats, args.max_repeats, args.spread_tolerance)
    bar.close()
    elapsed = time.perf_counter() - started
    header = {
        "machine": machine(device),
        "load_start": load_start,
        "load_end": f"{os.getloadavg()[0]:.1f}",
        "elapsed": f"{elapsed / 60:.1f} min" if elapsed >= 60 else f"{elapsed:.0f} s",
        "rounds": str(rounds),
        "allocator": allocator,
    }
    if device.type == "cuda":
        peak = mb(torch.cuda.max_memory_allocated(device))
        header["machine"] += f"; peak GPU memory allocated during the timed rounds {peak} MB"
    report = render_report(families, variants, gaps, all_checks(), args, argv, device, header)
    out = report_path(args.out, args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(report)
    print(f"report written to {out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
