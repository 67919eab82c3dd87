"""Speed and memory: train-step time, peak memory and scoring throughput of the prompt methods, in one run.

    python benchmarks/speed.py [--model-size base|small] [--device cpu|cuda] [--repeats N] [--batch B] \
        [--seq-len L] [--eval-batch E] [--threads T] [--clock wall|cpu] [--out benchmarks/results/speed.md]
    python benchmarks/speed.py --model DIR ...      # a pretrained masked or causal LM instead (e.g. SmolLM2)

Models are built from configs, nothing is downloaded: a BERT-base-sized masked LM (vocabulary 28996) and a
GPT-2-sized causal LM (``--model-size small``: tiny configs for quick runs and the test); ``--model DIR`` measures
one pretrained masked or causal LM from a local folder instead (e.g. SmolLM2-135M from benchmarks/models.py).
Every variant of one model shares the same frozen weights and the same examples. A warm-up pass over all variants
measures peak memory; then each repetition runs every variant once, round-robin with a rotating start, and the table
reports medians. See docs/speed.md for what each variant does and how to read the numbers.
"""

from __future__ import annotations

import argparse
import copy
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
                  candidates)


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
    """One way of running a train step (``optimizer`` set) or of scoring an evaluation batch."""

    family: str
    name: str
    forward: Callable[[], torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None
    collate: Callable[[], Any] | None = None
    facts: int = 0
    templates: int = 1
    times: list[float] = field(default_factory=list)
    collate_times: list[float] = field(default_factory=list)
    peak: int = 0

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


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


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
    family: Family, generator: Path | None, device: torch.device
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
    if kind == "masked" and generator is not None:
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


@dataclass
class Check:
    """One target of the issue: measured ratio against its limit."""

    what: str
    family: str
    value: float
    limit: float
    at_least: bool = False

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def row(self) -> str:
        sign = "≥" if self.at_least else "≤"
        verdict = "PASS" if self.passed else "FAIL"
        return f"| {self.what} | {self.family} | {self.value:.2f}× | {sign} {self.limit:.2f}× | {verdict} |"


def by_kind(variants: list[Variant], family: str) -> tuple[dict[str, Variant], dict[str, Variant]]:
    """The train-step and the scoring variants of ``family``, by name."""
    mine = [v for v in variants if v.family == family]
    return ({v.name: v for v in mine if v.optimizer is not None}, {v.name: v for v in mine if v.optimizer is None})


def checks(family: str, train: dict[str, Variant], evaluation: dict[str, Variant]) -> list[Check]:
    floor, single, peft_pt = train[FLOOR], train[SINGLE], train[PEFT_PT]
    out = [
        Check("single soft prompt step / PEFT PROMPT_TUNING", family, single.step / peft_pt.step, 0.9),
        Check("single soft prompt step / floor", family, single.step / floor.step, 1.05),
    ]
    for k in MIXTURE_SIZES:
        out.append(Check(f"mixture K={k} step / single", family, train[mixture_name(k)].step / single.step, 1.1 * k))
    out.append(Check("deep step / single", family, train[DEEP].step / single.step, 1.1))
    throughput = evaluation[SINGLE].step / evaluation[FLOOR].step
    out.append(Check("scoring throughput / floor", family, 1 / throughput, 0.95, at_least=True))
    for name, variant in train.items():
        if name.startswith("ours") and name != PROMPTGEN:
            k = variant.templates
            rows = f", B·{k} rows" if k > 1 else ""
            what = f"peak memory / floor ({name.removeprefix('ours: ')}{rows})"
            out.append(Check(what, family, variant.peak / floor.peak, 1.1 * k))
    return out


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
        f"- device {device.type}; {CLOCK_TEXT[args.clock]}; median of {args.repeats} interleaved repetitions "
        "(min–max beside it) after one warm-up pass;",
        f"- train batch {args.batch} examples (mixture K: {args.batch}·K rows), rows of at most {args.seq_len} tokens; "
        f"scoring batch {args.eval_batch} facts over {len(families[0].candidates):,} candidate ids;",
        "- peak memory of the first step (the warm-up): "
        + ("torch.cuda.max_memory_allocated above what was allocated before it" if device.type == "cuda" else
           "tensor storages it allocates, counted by a TorchDispatchMode")
        + ": activations, gradients and Adam state, not the weights;",
        "- collate: building the batch from (subject, answer) strings with PromptCollator, not part of the step time.",
        "",
    ]
    for family in families:
        train, evaluation = by_kind(variants, family.name)
        floor, single, peft_pt = train[FLOOR], train[SINGLE], train[PEFT_PT]
        lines += [
            f"## {family.title}",
            "",
            f"Floor and ours compute the same loss and scores (largest difference {gaps[family.name]:.1e}).",
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
        if PROMPTGEN not in train:
            lines.append(f"| {PROMPTGEN} | masked LMs only | | | | | | | |")
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
    lines += [
        "## Targets (issue \"Speed and memory\")",
        "",
        "| target | model | measured | limit | result |",
        "| --- | --- | ---: | ---: | --- |",
        *[check.row() for check in all_checks],
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="base", choices=("base", "small"))
    parser.add_argument("--model", default=None,
                        help="a local folder with a pretrained masked or causal LM to measure instead of the configs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per variant (median reported)")
    parser.add_argument("--batch", type=int, default=16, help="training examples per step")
    parser.add_argument("--seq-len", type=int, default=32, help="longest row of the single template, in tokens")
    parser.add_argument("--eval-batch", type=int, default=32, help="facts per scoring batch")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="cpu: CPU time of this process, robust to other processes on a shared machine when "
                        "--threads 1 (CPU devices only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 gives stable timings on a shared CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/speed.md", help="markdown report")
    args = parser.parse_args(argv)
    if min(args.repeats, args.batch, args.eval_batch, args.threads or 1) < 1:
        parser.error("--repeats, --batch, --eval-batch and --threads must be >= 1")
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU work; time GPU runs with --clock wall")
    return args


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = f"{os.getloadavg()[0]:.1f}"
    names = [Path(args.model).name] if args.model is not None else FAMILIES
    families = [build_family(name, args) for name in names]
    variants: list[Variant] = []
    gaps: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        # PromptGen (masked LMs only) needs a generator; a causal --model does not
        masked = any(family.lm_kind == "masked" for family in families)
        generator = save_generator(args.model_size, Path(directory), args.seed) if masked else None
        for family in families:
            train, evaluation, gaps[family.name] = build_variants(family, generator, device)
            variants += train + evaluation
    for variant in tqdm(variants, desc="warm-up and memory", leave=False):
        variant.peak = peak_bytes(variant.run, device)
    clock = CLOCKS[args.clock]
    for repeat in tqdm(range(args.repeats), desc="repetitions", leave=False):
        shift = repeat % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            variant.times.append(timed(variant.run, device, clock))
            if variant.collate is not None:
                variant.collate_times.append(timed(variant.collate, device, clock))
    all_checks = [check for family in families for check in checks(family.name, *by_kind(variants, family.name))]
    elapsed = time.perf_counter() - started
    header = {
        "machine": machine(device),
        "load_start": load_start,
        "load_end": f"{os.getloadavg()[0]:.1f}",
        "elapsed": f"{elapsed / 60:.1f} min" if elapsed >= 60 else f"{elapsed:.0f} s",
    }
    report = render_report(families, variants, gaps, all_checks, args, argv, device, header)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(report)
    return report


if __name__ == "__main__":
    main()
