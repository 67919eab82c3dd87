"""The training loop shared by the benchmarks: epochs, early stopping on a dev score (P@1 by default), exact resume,
progress bars.

It trains one prompt adapter on one task (e.g. one LAMA relation) in the current process. Checkpoints hold the
adapter parameters, the optimiser state and the loop counters in safetensors + JSON, written atomically; batch
order comes from a generator seeded by (seed, epoch), so a resumed run continues bit for bit like an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn
from tqdm.auto import tqdm

from prompt_adapters.data.collator import PromptCollator
from prompt_adapters.metrics.lama import gold_rank
from prompt_adapters.run_dir import CheckpointStore, ResumeMismatchError, differences
from prompt_adapters.run_dir import atomic_write_text as atomic_write_text
from prompt_adapters.scoring import IGNORE, candidate_positions
from prompt_adapters.validation import check_field_types
from prompt_adapters.zero3 import Zero3Run, deepspeed_plugin


@dataclass
class TrainSettings:
    """Optimiser, schedule and stopping rule; defaults are the Qin & Eisner reference values.

    ``dropout`` puts the frozen LM in train mode while training (P-tuning does; Qin & Eisner keep eval mode);
    ``improve_on_tie`` counts an equal dev score as an improvement (P-tuning keeps the later checkpoint on ties).
    Base-model parameters left trainable (joint fine-tuning, P-tuning's SuperGLUE setting) get their own group with
    ``base_learning_rate`` and ``base_weight_decay`` (AdamW on biases and norms excluded, as in the reference).
    ``schedule`` is ``exponential`` (``lr_decay`` per epoch) or ``linear`` (warm-up over ``warmup_ratio`` of the
    steps, then linear decay to 0).
    """

    epochs: int = 16
    learning_rate: float = 1e-3
    batch_size: int = 32
    eval_batch_size: int = 64
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_decay: float = 1.0
    patience: int | None = 4
    seed: int = 42
    em: bool = False
    max_grad_norm: float | None = None
    dropout: bool = False
    improve_on_tie: bool = False
    base_learning_rate: float | None = None
    base_weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "exponential"

    def __post_init__(self) -> None:
        check_field_types(self, TrainSettings)
        for name in ("learning_rate", "weight_decay", "base_weight_decay", "warmup_ratio"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:  # warmup_ratio may exceed 1: a fixed warm-up longer than a short run
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("exponential", "linear"):
            raise ValueError(f"schedule must be 'exponential' or 'linear', got {self.schedule!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class FitResult:
    """Outcome of one fit: best dev P@1, the epoch it was reached (0: no epoch beat the starting parameters, which
    are kept), per-epoch history, and the dev P@1 of the starting parameters (None for runs resumed from checkpoints
    written before it was recorded)."""

    best_dev: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    start_dev: float | None = None


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def _make_optimizer(params: dict[str, torch.Tensor], settings: TrainSettings) -> torch.optim.Optimizer:
    """One group for the adapter; base-model parameters (if any are trainable) in groups of their own.

    When every parameter is a floating-point CUDA tensor the fused implementation runs (``fused=True``, as
    transformers' ``adamw_torch_fused``): it steps all of them in one kernel instead of the default foreach chain of
    several, which adds up with one optimiser per adapter in joint training. Elsewhere PyTorch's default stays.
    """
    cls = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    adapter = [p for n, p in params.items() if "_state." in n or "modules_to_save" in n]
    base = {n: p for n, p in params.items() if not ("_state." in n or "modules_to_save" in n)}
    groups: list[dict[str, Any]] = [{"params": adapter, "lr": settings.learning_rate}]
    if base:
        lr = settings.base_learning_rate if settings.base_learning_rate is not None else settings.learning_rate
        decayed = [p for n, p in base.items() if p.dim() > 1 and "norm" not in n.lower()]
        plain = [p for n, p in base.items() if not (p.dim() > 1 and "norm" not in n.lower())]
        groups += [
            {"params": decayed, "lr": lr, "weight_decay": settings.base_weight_decay},
            {"params": plain, "lr": lr, "weight_decay": 0.0},
        ]
    every = [p for group in groups for p in group["params"]]
    fused = bool(every) and all(p.is_cuda and p.is_floating_point() for p in every)
    return cls(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=fused or None)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if settings.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=settings.lr_decay)
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = int(settings.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def rank_answers(
    model: nn.Module,
    collator: PromptCollator,
    examples: Sequence[Any],
    batch_size: int = 64,
    exclude: Callable[[Sequence[Any]], torch.Tensor | None] | None = None,
    progress: bool = False,
    scores: str = "answer_log_probs",
) -> torch.Tensor:
    """1-based rank of every example's gold answer under the adapter's answer distribution (candidates if set).

    ``scores`` names the output to rank by (e.g. PromptGen's ``none_log_probs`` for the None diagnostic).
    """
    was_training = model.training
    model.eval()
    ranks = []
    for start in tqdm(range(0, len(examples), batch_size), disable=not progress, desc="scoring", leave=False):
        chunk = examples[start : start + batch_size]
        batch = on_model_device(model, collator(chunk))
        out = model(**batch)
        step = _rows_per_example(collator)
        gold = batch["score_targets"][: len(chunk) * step : step, 0]
        index = candidate_positions(collator.candidate_ids, gold)
        if (index == IGNORE).any():
            raise ValueError("every scored example needs a gold answer")
        mask = exclude(chunk) if exclude is not None else None
        scored = out[scores].float()
        undefined = int(torch.isnan(scored.gather(1, index.to(scored.device).long().unsqueeze(1))).sum())
        if undefined:
            raise NonFiniteScoresError(f"the gold answer's score is NaN for {undefined} of {len(chunk)} examples: "
                                       "their rank is undefined. Expected finite scores from the model")
        ranks.append(gold_rank(scored, index, mask).cpu())
    model.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def on_model_device(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's tensors on the model's device: collators build CPU tensors (as transformers' do) and the loops
    here move them, so a model placed on a GPU trains and scores there."""
    device = next(model.parameters()).device
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def _rows_per_example(collator: PromptCollator) -> int:
    return len(collator.templates)


def precision_at_1(ranks: torch.Tensor) -> float:
    return float((ranks == 1).float().mean()) if ranks.numel() else 0.0


# ------------------------------------------------------------------------------------------------ checkpoints


def _checkpoint_store(directory: Path) -> CheckpointStore:
    return CheckpointStore(Path(directory), ("state.safetensors", "meta.json"), _readable_checkpoint)


def _readable_checkpoint(path: Path) -> bool:
    """A version directory whose meta.json parses and whose safetensors header is intact."""
    try:
        json.loads((path / "meta.json").read_text(encoding="utf-8"))
        with safe_open(str(path / "state.safetensors"), "pt") as handle:
            handle.keys()
    except (OSError, ValueError, SafetensorError):
        return False
    return True


def save_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, settings: dict | None = None
) -> Path:
    """Write adapter params, optimiser state, loop counters and the run's settings as a new checkpoint version.

    See ``prompt_adapters.run_dir``: the version is complete before it becomes visible, and older versions are
    removed only after it is, so a kill at any point leaves a loadable checkpoint.
    """
    return _write_checkpoint(directory, trainable_parameters(model), optimizer.state_dict(), state, settings)


def _write_checkpoint(
    directory: Path, params: dict[str, torch.Tensor], optim: dict[str, Any], state: dict, settings: dict | None
) -> Path:
    """``save_checkpoint`` from the parameters and the optimiser's ``state_dict()`` (whole tensors)."""
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in params.items()}
    for key, value in state.pop("best_params", {}).items():
        tensors[f"best.{key}"] = value.contiguous()
    scalars: dict[str, dict[str, float]] = {}
    for index, slots in optim["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = float(value)
    meta = {"loop": state, "optim_scalars": scalars, "param_groups": optim["param_groups"], "settings": settings}
    files = {"state.safetensors": save_bytes(tensors), "meta.json": json.dumps(meta).encode("utf-8")}
    return _checkpoint_store(directory).save(files)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint version in ``directory`` (None when there is none)."""
    return _checkpoint_store(directory).latest()


def load_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, settings: dict | None = None
) -> dict | None:
    """Restore the newest complete checkpoint in ``directory``; returns its loop counters (with ``best_params``).

    None when there is no checkpoint. With ``settings``, a checkpoint saved under other settings is refused,
    naming the keys that differ.
    """
    params = trainable_parameters(model)
    saved = _read_checkpoint(directory, list(params), settings)
    if saved is None:
        return None
    values, optim, loop = saved
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(values[name])
    optimizer.load_state_dict(optim)
    return loop


def _read_checkpoint(
    directory: Path, names: list[str], settings: dict | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict] | None:
    """The newest checkpoint's parameters ``names``, optimiser ``state_dict()`` and loop counters (checked)."""
    path = latest_checkpoint(directory)
    if path is None:
        return None
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if settings is not None and meta.get("settings") is not None:
        changed = differences(meta["settings"], settings)
        if changed:
            raise ResumeMismatchError(
                f"checkpoint {path} was trained with other settings (" + "; ".join(changed) + "); resume with the "
                "saved settings, or remove the checkpoint to start over"
            )
    tensors = load_file(str(path / "state.safetensors"))
    expected = {f"param.{name}" for name in names}
    stored = {key for key in tensors if key.startswith("param.")}
    if expected != stored:
        raise ResumeMismatchError(
            f"checkpoint {path} holds the parameters {sorted(stored - expected)} the model lacks and lacks "
            f"{sorted(expected - stored)}; it was saved by another adapter configuration"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, slots in meta["optim_scalars"].items():
        for name, value in slots.items():
            state.setdefault(int(index), {})[name] = torch.tensor(value)
    loop = meta["loop"]
    loop["best_params"] = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    values = {name: tensors[f"param.{name}"] for name in names}
    return values, {"state": state, "param_groups": meta["param_groups"]}, loop


# ------------------------------------------------------------------------------------------------ the loop


class _AdapterRun:
    """One adapter's optimiser, learning-rate schedule, early stopping and best parameters through a training run.

    ``fit`` drives one, ``fit_joint`` one per adapter; both take the same steps in the same order, which is what
    makes a joint run and separate runs end with the same parameters and resume each other's checkpoints.
    """

    def __init__(
        self,
        params: dict[str, torch.Tensor],
        settings: TrainSettings,
        steps_per_epoch: int,
        load: Callable[[torch.optim.Optimizer], dict[str, Any] | None],
        dev_score: Callable[[], float],
        zero3: Zero3Run | None = None,
    ) -> None:
        """``load`` reads a checkpoint into the parameters and the optimiser (None: start afresh); without one, the
        untrained adapter's ``dev_score`` is the score to beat and its parameters the best so far (epoch 0).
        With ``zero3`` the optimiser goes to DeepSpeed's engine, which then owns the update (``step`` only
        schedules)."""
        self.params = params
        self.settings = settings
        self.dev_score = dev_score
        self.zero3 = zero3
        self.optimizer = _make_optimizer(params, settings)
        if zero3 is not None:
            zero3.prepare(self.optimizer)
        self.scheduler = _make_scheduler(self.optimizer, settings, steps_per_epoch)
        saved = load(self.optimizer)
        if saved is not None:
            self.best = saved.pop("best_params")
            self.loop = saved
            done = self.loop["epoch"]
            self.scheduler.last_epoch = done if settings.schedule == "exponential" else done * steps_per_epoch
        else:
            start = dev_score()
            self.loop = {"epoch": 0, "best_dev": start, "best_epoch": 0, "bad_epochs": 0, "history": [],
                         "start_dev": start}
            self.best = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        if self.zero3 is not None:
            return self.zero3.full_parameters()
        return {name: param.detach().cpu().clone() for name, param in self.params.items()}

    @property
    def epoch(self) -> int:
        """Epochs finished."""
        return self.loop["epoch"]

    @property
    def training(self) -> bool:
        return self.epoch < self.settings.epochs and not _patience_exhausted(self.loop, self.settings)

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def batches(self, count: int) -> list[list[int]]:
        """The next epoch's batches of example indices, shuffled by a generator seeded with (seed, epoch)."""
        seed = self.settings.seed * 1000 + self.epoch
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        size = self.settings.batch_size
        return [order[start : start + size].tolist() for start in range(0, count, size)]

    def step(self) -> None:
        """The update after a backward pass: gradient clipping, optimiser step, per-step schedule (under ZeRO-3 the
        engine clipped and stepped in its backward)."""
        if self.zero3 is None:
            if self.settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.settings.max_grad_norm)
            self.optimizer.step()
        if self.settings.schedule == "linear":
            self.scheduler.step()

    def end_epoch(self, train_loss: float) -> float:
        """Per-epoch schedule, dev score, history, best parameters and patience; returns the epoch's dev score.

        A NaN dev score means the epoch's updates diverged even where every training loss was finite (an epoch of
        one step computes its only loss before its update): it stops training as a non-finite loss does.
        """
        learning_rate = self.learning_rate
        if self.settings.schedule == "exponential":
            self.scheduler.step()
        epoch = self.epoch + 1
        try:
            dev = self.dev_score()
        except NonFiniteScoresError as error:
            raise DivergedError(_diverged(f"the dev scores became NaN after epoch {epoch}", learning_rate)) from error
        if math.isnan(dev):
            raise DivergedError(_diverged(f"the dev score became NaN after epoch {epoch}", learning_rate))
        self.loop["epoch"] = epoch
        self.loop["history"].append({"epoch": epoch, "train_loss": train_loss, "dev_p1": dev})
        if dev > self.loop["best_dev"] or (self.settings.improve_on_tie and dev == self.loop["best_dev"]):
            self.loop.update(best_dev=dev, best_epoch=epoch, bad_epochs=0)
            self.best = self._snapshot()
        else:
            self.loop["bad_epochs"] += 1
        return dev

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores besides parameters and optimiser: the loop counters and the best parameters."""
        return {**self.loop, "best_params": self.best}

    def finish(self) -> FitResult:
        """Load the best parameters (into the whole model again under ZeRO-3) and report."""
        if self.zero3 is not None:
            self.zero3.release()
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.best[name])
        loop = self.loop
        stopped = _patience_exhausted(loop, self.settings)
        return FitResult(loop["best_dev"], loop["best_epoch"], loop["history"], stopped, loop.get("start_dev"))


#: builds the model inputs of a training batch (with what the model's ``loss`` needs) from a list of examples: a
#: ``PromptCollator``, or any callable of that shape (e.g. a harness's renderer for a task's answer format)
BatchBuilder = Callable[[list[Any]], dict[str, Any]]


def dev_precision_at_1(model: nn.Module, collator: PromptCollator, dev: Sequence[Any],
                       batch_size: int = 64) -> Callable[[], float]:
    """The selection score ``fit`` uses by default: P@1 of the gold answers of ``dev`` (LAMA's metric)."""
    return lambda: precision_at_1(rank_answers(model, collator, dev, batch_size))


def fit(
    model: nn.Module,
    collator: BatchBuilder,
    train: Sequence[Any],
    dev: Sequence[Any],
    settings: TrainSettings,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    description: str = "train",
    accelerator: Accelerator | None = None,
    dev_metric: Callable[[], float] | None = None,
) -> FitResult:
    """Train the active adapter; keep (and finally load) the parameters with the best dev selection score.

    ``collator`` builds each training batch from examples of ``train``. ``dev_metric`` is the scoring callback:
    it returns the current parameters' selection score (higher is better; e.g. the SuperGLUE score of a task) and is
    called with the model in eval mode. Without one the score is dev P@1 (``dev_precision_at_1``), which needs a
    collator that ranks answers as a ``PromptCollator`` does. Stops after ``patience`` further epochs without a
    strict dev improvement. With ``checkpoint_dir`` the state is saved after every epoch and an existing checkpoint
    is resumed from.

    With an ``accelerator`` of several processes the run is data-parallel: every global batch is split over the
    processes and the gradients summed, so the update equals the single-process one (up to float summation order)
    whatever the number of processes.

    With an ``accelerator`` that has a DeepSpeed plugin (ZeRO stage 3), DeepSpeed partitions the model and its engine
    runs backward and the optimiser step (``prompt_adapters.zero3``); the batches, losses, checkpoints and result
    are those of one process, and the model comes back whole (if training raises, it is left partitioned).
    """
    if len(train) == 0:
        raise ValueError("no training examples")
    if dev_metric is None:
        if not all(hasattr(collator, name) for name in ("candidate_ids", "templates")):
            raise TypeError(f"fit needs dev_metric (the dev selection score) unless the collator ranks answers as a "
                            f"PromptCollator does (candidate_ids, templates), got a {type(collator).__name__} and no "
                            "dev_metric")
        dev_metric = dev_precision_at_1(model, collator, dev, settings.eval_batch_size)  # type: ignore[arg-type]
    params = trainable_parameters(model)
    score = dev_metric
    zero3 = None
    if deepspeed_plugin(accelerator) is not None:
        if settings.em:
            raise ValueError("fit does not run the EM schedule (em=True) under DeepSpeed: its M-step writes the "
                             "mixture weights in place, which DeepSpeed partitions; train with em=False")
        zero3 = Zero3Run(accelerator, model, params, settings.batch_size, settings.max_grad_norm)  # type: ignore[arg-type]

    def dev_score() -> float:
        model.eval()
        return score()

    def load(optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        if checkpoint_dir is None:
            return None
        if zero3 is not None:
            return _load_zero3_checkpoint(Path(checkpoint_dir), zero3, _resume_settings(settings))
        return load_checkpoint(Path(checkpoint_dir), model, optimizer, _resume_settings(settings))

    run = _AdapterRun(params, settings, math.ceil(len(train) / settings.batch_size), load, dev_score, zero3)
    responsibilities = None
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    if zero3 is not None:
        rank, world = zero3.rank, zero3.world
    trainer = model if zero3 is None else zero3.engine
    bar = tqdm(total=settings.epochs, initial=run.epoch, disable=not progress or rank != 0, desc=description,
               leave=False)
    while run.training:
        if settings.em:
            responsibilities = em_step(model, collator, train, settings.eval_batch_size)
        model.train(settings.dropout)
        total = 0.0
        for step, index in enumerate(run.batches(len(train)), start=1):
            local, weight = index[rank::world], len(index[rank::world]) / len(index)
            if not local:  # a process left without examples still runs a forward (weighted 0): a sharded model's
                local, weight = index[:1], 0.0  # blocks gather their weights from every process
            if zero3 is not None:
                loss = _batch_loss(trainer, collator, train, local, responsibilities, params) * weight
                zero3.backward(loss)
                loss = zero3.sum(loss)
                check_finite_loss(loss, run.epoch + 1, step, run.learning_rate)
                run.step()
                total += float(loss) * len(index)
                continue
            run.optimizer.zero_grad()
            loss = _batch_loss(model, collator, train, local, responsibilities, params) * weight
            loss.backward()
            if world > 1:
                for param in params.values():
                    if param.grad is not None:
                        param.grad = accelerator.reduce(param.grad, "sum")  # type: ignore[union-attr]
                loss = accelerator.reduce(loss.detach(), "sum")  # type: ignore[union-attr]
            check_finite_loss(loss, run.epoch + 1, step, run.learning_rate)
            run.step()
            total += float(loss.detach()) * len(index)
        dev_p1 = run.end_epoch(total / len(train))
        if checkpoint_dir is not None and zero3 is not None:
            whole, optim = zero3.full_parameters(), zero3.optimizer_state_dict()  # every process gathers
            if rank == 0:
                _write_checkpoint(Path(checkpoint_dir), whole, optim, run.state(), _resume_settings(settings))
        elif checkpoint_dir is not None and rank == 0:
            save_checkpoint(Path(checkpoint_dir), model, run.optimizer, run.state(), _resume_settings(settings))
        if world > 1:
            accelerator.wait_for_everyone()  # type: ignore[union-attr]
        bar.update(1)
        bar.set_postfix(loss=f"{total / len(train):.3f}", dev=f"{dev_p1:.3f}")
    bar.close()
    result = run.finish()
    model.eval()
    return result


def _load_zero3_checkpoint(directory: Path, zero3: Zero3Run, settings: dict[str, Any]) -> dict[str, Any] | None:
    """``load_checkpoint`` into DeepSpeed's partitions (every process reads the checkpoint and must call this)."""
    saved = _read_checkpoint(directory, list(zero3.params), settings)
    if saved is None:
        return None
    values, optim, loop = saved
    zero3.set_parameters(values)
    zero3.load_optimizer_state_dict(optim)
    return loop


def _batch_loss(
    model: nn.Module,
    collator: BatchBuilder,
    train: Sequence[Any],
    index: list[int],
    responsibilities: torch.Tensor | None,
    params: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Mean loss of the examples ``index`` (EM: responsibility-weighted); a zero that keeps the graph if empty."""
    if not index:
        return sum(param.sum() * 0.0 for param in params.values())  # type: ignore[return-value]
    out = model(**on_model_device(model, collator([train[i] for i in index])))
    if responsibilities is not None:
        return -(responsibilities[index] * out.template_log_probs).sum(1).mean()
    return out.loss


@dataclass
class JointTask:
    """One adapter of a joint fit: its name, its collator, its training and dev examples and its settings."""

    adapter: str
    collator: PromptCollator
    train: Sequence[Any]
    dev: Sequence[Any]
    settings: TrainSettings


def fit_joint(
    model: nn.Module,
    tasks: Sequence[JointTask],
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    description: str = "joint",
) -> dict[str, FitResult]:
    """Train several adapters in one batched loop (e.g. every LAMA relation at once), each as ``fit`` trains it alone.

    At every step the step-th batch of each adapter still training goes into one forward with per-row adapters
    (``adapter_names``); each adapter keeps its own optimiser state, learning-rate schedule, early stopping and best
    parameters. An adapter's loss depends only on its own rows and parameters, so with the same batches (``fit``'s
    order, seeded by its settings' seed and the epoch) it ends with the parameters and dev P@1 that ``fit`` gives,
    to float tolerance. An adapter that stops early or has fewer batches simply leaves the later forwards.

    With ``checkpoint_dir`` each adapter's state is saved after each of its epochs in ``checkpoint_dir/<adapter>``,
    in ``fit``'s format, and resumed from there: a killed joint run continues as if never stopped, and a joint run
    resumes separate runs' checkpoints (and the reverse).
    Not supported here: EM (``settings.em``), several processes, base-model parameters trained with an adapter
    (they would be shared by every adapter). Returns each adapter's FitResult.
    """
    tuner = getattr(model, "base_model", model)
    names = [task.adapter for task in tasks]
    if not tasks or len(set(names)) != len(names):
        raise ValueError(f"fit_joint needs one task per adapter, at least one, got adapters {names}")
    if len({task.settings.dropout for task in tasks}) != 1:
        raise ValueError("fit_joint runs one forward for every adapter: all tasks need the same dropout setting")
    original = tuner.active_adapter
    params: dict[str, dict[str, torch.Tensor]] = {}
    for task in tasks:
        if task.settings.em:
            raise ValueError(f"task {task.adapter!r}: fit_joint does not run the EM schedule; use fit() for em=True")
        if task.collator.adapter_name != task.adapter:
            raise ValueError(
                f"task {task.adapter!r} has the collator of adapter {task.collator.adapter_name!r}; build it with "
                f"PromptCollator(tokenizer, model, adapter_name={task.adapter!r})"
            )
        if len(task.train) == 0:
            raise ValueError(f"task {task.adapter!r} has no training examples")
        tuner.set_adapter(task.adapter)  # as fit() finds it: the adapter's own trainable parameters
        params[task.adapter] = trainable_parameters(model)
    shared = set.intersection(*(set(own) for own in params.values())) if len(params) > 1 else set()
    if shared:
        raise ValueError(
            f"parameters {sorted(shared)[:3]} are trainable for every adapter; joint training needs each adapter's "
            "parameters to be its own (train base-model parameters with fit(), one adapter at a time)"
        )

    def trainable(on: bool) -> None:
        for own in params.values():
            for param in own.values():
                param.requires_grad_(on)

    def dev_score(task: JointTask) -> float:
        tuner.set_adapter(task.adapter)
        score = precision_at_1(rank_answers(model, task.collator, task.dev, task.settings.eval_batch_size))
        trainable(True)
        return score

    def only(name: str) -> None:
        """Make ``name``'s parameters the trainable ones: the checkpoint functions save and load those (the
        checkpoint of one adapter is the one ``fit`` writes, so a joint run and separate runs resume each other)."""
        trainable(False)
        for param in params[name].values():
            param.requires_grad_(True)

    def load(task: JointTask) -> Callable[[torch.optim.Optimizer], dict[str, Any] | None]:
        def read(optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
            if checkpoint_dir is None:
                return None
            only(task.adapter)
            directory = Path(checkpoint_dir) / task.adapter
            saved = load_checkpoint(directory, model, optimizer, _resume_settings(task.settings))
            trainable(True)
            return saved

        return read

    runs = {
        task.adapter: _AdapterRun(params[task.adapter], task.settings,
                                  math.ceil(len(task.train) / task.settings.batch_size),
                                  load(task), functools.partial(dev_score, task))
        for task in tasks
    }
    by_name = {task.adapter: task for task in tasks}
    collator = tasks[0].collator
    for task in tasks[1:]:
        collator.add_collator(task.collator)

    total_epochs = max(task.settings.epochs for task in tasks)
    done = min(run.epoch for run in runs.values())
    bar = tqdm(total=total_epochs, initial=done, disable=not progress, desc=description, leave=False)  # rounds
    while active := [name for name, run in runs.items() if run.training]:
        # each adapter's next epoch, in fit's order (resumed adapters may be at other epochs)
        batches = {name: runs[name].batches(len(by_name[name].train)) for name in active}
        model.train(tasks[0].settings.dropout)
        totals = dict.fromkeys(active, 0.0)
        for step in range(max(len(chunks) for chunks in batches.values())):
            here = [name for name in active if step < len(batches[name])]
            pairs = [(name, by_name[name].train[i]) for name in here for i in batches[name][step]]
            for name in here:
                runs[name].optimizer.zero_grad()
            out = model(**on_model_device(model, collator.mixed_batch(pairs)))
            for name in here:
                loss = out.adapter_losses.get(name) if out.get("adapter_losses") is not None else None
                if loss is None:
                    raise ValueError(f"adapter {name!r}: a training batch without any known answer")
                check_finite_loss(loss, runs[name].epoch + 1, step + 1, runs[name].learning_rate)
                totals[name] += float(loss.detach()) * len(batches[name][step])
            out.loss.backward()
            for name in here:
                runs[name].step()
        for name in active:
            task, run = by_name[name], runs[name]
            run.end_epoch(totals[name] / len(task.train))
            if checkpoint_dir is not None:
                only(name)
                save_checkpoint(Path(checkpoint_dir) / name, model, run.optimizer, run.state(),
                                _resume_settings(task.settings))
                trainable(True)
        bar.update(1)
    bar.close()
    results = {name: run.finish() for name, run in runs.items()}
    tuner.set_adapter(original)
    model.eval()
    return results


def _resume_settings(settings: TrainSettings) -> dict[str, Any]:
    """The settings a resumed fit must share with the saved one.

    With the per-epoch exponential schedule, more epochs continue exactly as a longer run would, so ``epochs`` may
    grow on resume; the linear schedule's slope depends on the total, so there it must match too.
    """
    values = asdict(settings)
    if settings.schedule == "exponential":
        values.pop("epochs")
    return values


class DivergedError(FloatingPointError):
    """Training produced a non-finite loss, or parameters whose dev scores are NaN."""


class NonFiniteScoresError(ValueError):
    """The model scored a gold answer NaN, so its rank is undefined."""


def _diverged(what: str, learning_rate: float) -> str:
    return (f"{what} with learning rate {learning_rate:g}: training diverged. Expected finite losses and scores; "
            "lower the learning rate (--lr in the benchmarks)")


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int, learning_rate: float) -> None:
    """Stop at the first NaN/inf loss, saying where it happened and at which learning rate."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergedError(_diverged(f"the training loss became {value} at epoch {epoch}, step {step}", learning_rate))


def mixed_precision_used(accelerator: Accelerator | None) -> dict[str, str]:
    """The mixed precision requested from accelerate and the one actually used.

    accelerate runs fp16 on CPU in fp32 without a word (no CPU autocast for fp16); this reports it.
    """
    if accelerator is None:
        return {"requested": "no", "used": "fp32", "device": "cpu", "note": ""}
    requested = str(accelerator.mixed_precision)
    active = requested != "no" and bool(getattr(accelerator, "native_amp", False))
    used = requested if active else "fp32"
    note = ""
    if requested != "no" and not active:
        note = f"{requested} was requested but {accelerator.device.type} has no {requested} autocast: ran in fp32"
    return {"requested": requested, "used": used, "device": accelerator.device.type, "note": note}


def describe_precision(report: dict[str, str]) -> str:
    """One line for a results page: requested and used mixed precision, and why they differ."""
    note = f" ({report['note']})" if report.get("note") else ""
    return f"Mixed precision: requested {report['requested']}, used {report['used']} on {report['device']}{note}."


def _patience_exhausted(loop: dict[str, Any], settings: TrainSettings) -> bool:
    return settings.patience is not None and loop["bad_epochs"] > settings.patience


@torch.no_grad()
def em_step(model: nn.Module, collator: BatchBuilder, train: Sequence[Any], batch_size: int) -> torch.Tensor:
    """E-step then closed-form M-step of the reference code's EM schedule.

    gamma[i, t] = pi_t p_t(y_i|x_i) / sum_t' pi_t' p_t'(y_i|x_i); pi_t <- mean_i gamma[i, t]. The mixture logits are
    set to log pi (they are not trained by gradient in this schedule) and gamma is returned for the weighted loss.
    """
    state = model.base_model.state if hasattr(model, "base_model") else model.state
    name = state.active_name
    model.eval()
    gammas = []
    for start in range(0, len(train), batch_size):
        out = model(**on_model_device(model, collator(train[start : start + batch_size])))
        joint = out.mixture_log_weights + out.template_log_probs
        gammas.append(torch.softmax(joint.float(), dim=1))
    gamma = torch.cat(gammas)
    if name in state.mixture:  # one template has no mixture logit (its weight is 1)
        state.mixture[name].copy_(torch.log(gamma.mean(0).clamp(min=1e-12)))
        state.mixture[name].requires_grad_(False)
    return gamma
