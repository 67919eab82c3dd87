"""The measurement machinery of benchmarks/speed.py: the models and examples measured, the variants (one train step
or one scoring batch of a method, of peft's prompt methods or of the bare-model floor), their timing and peak memory,
and the joint-training comparison.

Every variant of one model shares the same frozen weights and the same examples. ``Variant.measure`` times one run
on a clock (``CLOCKS``), ``peak_bytes`` measures what a run allocates (``torch.cuda.max_memory_allocated`` on a GPU,
``PeakTensorMemory`` on a CPU). The report, its targets and the command line are in speed.py.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import functools
import random
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peft
import torch
import torch.nn.functional as F
from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
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
from prompt_adapters.methods.promptgen.model import PromptGenLayer
from prompt_adapters.model_facts import LMKind
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
#: rank of the LoRA adapters of the parameter-efficient generator
LORA_RANK = 8
PROMPTGEN_LORA = f"ours: PromptGen, LoRA generator (rank {LORA_RANK})"
PROMPTGEN_BOUND, PROMPTGEN_LORA_BOUND = (
    "lower bound of PromptGen (generator run once, teacher-forced)",
    "lower bound of PromptGen, LoRA generator",
)
#: PromptGen's speed target: its step against its own lower bound (``teacher_forced_prompts``)
PROMPTGEN_BOUND_LIMIT = 1.15
#: the memory target of a parameter-efficient (LoRA) generator: its step's peak memory against the floor's
PROMPTGEN_MEMORY_LIMIT = 3.0


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
    lm_kind: LMKind
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


def single_config(tokenizer: Any, lm_kind: LMKind) -> MixturePromptConfig:
    return MixturePromptConfig(templates=[template(TEMPLATES[0], lm_kind)], tokenizer=tokenizer)


def template(text: str, lm_kind: LMKind) -> str:
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


def peft_batch(batch: dict[str, torch.Tensor], vocab: int, lm_kind: LMKind, prompts: int) -> dict[str, torch.Tensor]:
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


def promptgen(family: Family, generator: Path, device: torch.device, lora_rank: int = 0,
              bound: bool = False) -> tuple[Variant, nn.Module]:
    """A train-step variant of PromptGen with the paper's maximal prompt (m=10, n=5, fixed stopping) and leak rows,
    and its model; the generator trains (all of it, or LoRA adapters of rank ``lora_rank`` on it). ``bound``: its
    lower bound, the same step with the generator's tokens from ``teacher_forced_prompts``."""
    config = PromptGenConfig(generator_name_or_path=str(generator), tokenizer=family.tokenizer, stopping="fixed",
                             generator_lora_rank=lora_rank)
    model = get_peft_model(share_weights(family.model), config).to(device)
    collate = PromptGenCollator(family.tokenizer, model)
    examples = [{"X": subject, "Y": answer, "template": TEMPLATES[0]} for subject, answer in family.train]
    batch = to_device(collate(examples), device)
    if bound:
        state = model.base_model.state
        state.generate = functools.partial(teacher_forced_prompts, state)
        name = PROMPTGEN_LORA_BOUND if lora_rank else PROMPTGEN_BOUND
        return Variant(family.name, name, lambda: model(**batch).loss, adam(model)), model
    name = PROMPTGEN_LORA if lora_rank else PROMPTGEN
    return Variant(family.name, name, lambda: model(**batch).loss, adam(model), lambda: collate(examples)), model


def teacher_forced_prompts(
    state: PromptGenLayer,
    name: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    subject_ids: torch.Tensor,
    answer_sets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PromptGen's soft tokens and segment lengths from one parallel pass of its encoder-decoder generator, in place
    of ``PromptGenLayer.generate`` (fixed stopping, soft tokens: the settings ``promptgen`` measures).

    The encoder reads the same input; the decoder reads, in one forward, the positions the decoding loop reads:
    its start tokens and the subject, then m - 1 soft positions, and for a second segment (n > 0) the m-th, the
    answer slot's mask token and n - 1 more. Teacher forcing puts one fixed shared word at the soft positions
    instead of feeding each distribution back. The m + n distributions are the softmax over the shared words of
    the logits at the positions the loop takes them from, so the downstream model, the loss, the backward and Adam
    run on inputs of the same shapes as PromptGen's step: no implementation with the same outputs does less.
    ``answer_sets`` (which words end a segment) plays no part with fixed stopping.
    """
    options, generator = state.options[name], state.generator[name]
    m, n = options["m"], options["written_after"]
    device = input_ids.device
    common = options["gen_ids"].to(device)
    word = int(common[0])
    start = options["prefix_ids"].tolist()
    soft = [word] * (m - 1) + ([word, options["mask_id"], *[word] * (n - 1)] if n else [])
    rows = [start + subject[subject >= 0].tolist() + soft for subject in subject_ids]
    decoder = torch.full((len(rows), max(len(row) for row in rows)), generator.config.pad_token_id, device=device)
    for index, row in enumerate(rows):
        decoder[index, : len(row)] = torch.tensor(row)
    logits = generator(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder).logits
    # the first segment's t-th token comes from the position before it, the second's from the slot and after it
    subject_ends = [len(row) - len(soft) for row in rows]
    positions = torch.tensor([[end - 1 + t for t in range(m)] + [end + m + t for t in range(n)]
                              for end in subject_ends], device=device)
    picked = logits[torch.arange(len(rows), device=device).unsqueeze(1), positions].float()
    dist = torch.softmax(picked.index_select(-1, common), dim=-1)
    steps = F.pad(dist, (0, 0, 0, options["n"] - n))  # a causal downstream LM's second segment stays unwritten
    lengths = torch.tensor([[m, n]] * len(rows), device=device)
    return steps, lengths


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
    train += [promptgen(family, generator, device, rank, bound)[0]
              for rank in (0, LORA_RANK) for bound in (False, True)]

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
