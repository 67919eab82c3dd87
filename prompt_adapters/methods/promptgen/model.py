"""PromptGen: a fine-tuned generator writes, for every input, soft prompt tokens for a frozen model.

Each generated token is a distribution D_t over the vocabulary both models share. The decoder starts from the copied
subject; it reads each D_t back as the expectation of its own embeddings (the next decoder input, reusing the
key/value cache, so m + n tokens cost at most m + n + 1 decoder steps after the longest subject), and the downstream
model receives the expectation of *its* embeddings at the pseudo positions of ``[X] [P*m] [Y] [P*n]``. When a
segment may stop early (``stopping`` other than ``fixed``), unused soft positions are removed from the downstream
input before it runs. The generator is an encoder-decoder (the paper's BART) or a decoder-only LM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache

from prompt_adapters.data.collator import PromptCollator
from prompt_adapters.injection import PromptHooks, ScoreRequest
from prompt_adapters.methods.promptgen.config import PromptGenConfig
from prompt_adapters.methods.promptgen.deferred import one_weight_gradient_per_layer
from prompt_adapters.scoring import IGNORE, candidate_positions, slot_log_probs
from prompt_adapters.template import TemplateError
from prompt_adapters.tuner import PromptLayer, PromptTuner, embed_scale

GENERATOR_KEYS = ("generator_input_ids", "generator_attention_mask", "generator_subject_ids", "prompt_rows")
#: each example's set of answer words (0: the pooled ``answer_words``; i > 0: the i-th template of the sorted
#: ``relation_answer_words``); only in batches of adapters with words per relation
ANSWER_SETS = "generator_answer_sets"
#: the name of the LoRA adapter inside a parameter-efficient generator (``generator_lora_rank``)
GENERATOR_LORA = "promptgen_lora"


class PromptGenLayer(PromptLayer[PromptGenConfig]):
    """The generator (trainable) and the shared vocabulary of each adapter; per-batch prompt tables."""

    supports_adapter_names = False
    unshardable_reason = (
        "its prompt table multiplies the generator's token distributions with the base model's input-embedding "
        "matrix before the base model runs, when a sharded matrix is split over the processes; train PromptGen "
        "data parallel (unsharded) instead"
    )

    adapter_layer_names = ("generator",)
    other_param_names = ("templates", "settings", "options")
    forward_keys = (*GENERATOR_KEYS, ANSWER_SETS)

    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.ModuleDict()
        self.options: dict[str, dict[str, Any]] = {}
        self._downstream: dict[str, tuple[torch.Tensor, float, int]] = {}
        self._batch_table: torch.Tensor | None = None
        self._leak_rows = False
        #: the leak-row layout of the call whose scores ``combine`` reads (set by ``end_forward``)
        self._scored_leak_rows = False
        self._generating = False
        self.last_generation: tuple[torch.Tensor, torch.Tensor] | None = None
        #: log P(L) of the first segment's lengths L = 0..m in the last generation (``trained_length`` only)
        self.last_length_log_probs: torch.Tensor | None = None
        #: the log P(L) weights of the rows ``prepare`` repeated once per length, for ``combine``
        self._length_weights: torch.Tensor | None = None
        #: adapters whose generator trains through LoRA only
        self.lora_generators: set[str] = set()
        #: the prompts of the batch while its None rows run in a call of their own (see ``prepare``)
        self._shared: tuple[torch.Tensor, torch.Tensor] | None = None
        #: (log-probabilities, gathered logits) of the None rows run separately, for ``combine``
        self._none_scores: tuple[torch.Tensor, torch.Tensor] | None = None
        #: the downstream model (in a tuple, so it is not registered here): the None rows' own call
        self._model: tuple[nn.Module, ...] = ()

    def create(self, name: str, config: PromptGenConfig, model: nn.Module, init_ids: list[int]) -> None:
        """The generator (from ``config.generator_name_or_path``; LoRA-wrapped with ``generator_lora_rank``) and the
        options its prompts are written with."""
        generator_config = AutoConfig.from_pretrained(config.generator_name_or_path)
        auto = AutoModelForSeq2SeqLM if generator_config.is_encoder_decoder else AutoModelForCausalLM
        if _creating_on_meta():  # PeftModel.from_pretrained(..., low_cpu_mem_usage=True): the saved weights follow
            generator = auto.from_config(generator_config)
        else:
            generator = auto.from_pretrained(config.generator_name_or_path).float()
        rank = config.generator_lora_rank
        if rank:
            lora = LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear")
            generator = inject_adapter_in_model(lora, generator, adapter_name=GENERATOR_LORA)
            self.lora_generators.add(name)
        generator_tokenizer = AutoTokenizer.from_pretrained(config.generator_name_or_path)
        self.generator[name] = generator
        down_ids, gen_ids = config.common_vocab
        embedding = model.get_input_embeddings()
        scale = embed_scale(embedding, embedding.weight)
        self._downstream[name] = (embedding.weight, scale, embedding.weight.shape[0])
        self._model = (model,)
        answer_stops = config.answer_stops or []
        causal = config.lm_kind == "causal"
        m, n = config.num_before, config.num_after
        written_after = 0 if causal else n  # a causal LM never reads past the answer slot
        stop_ids = _stop_ids(config.stopping, generator_tokenizer, generator, written_after)
        mask_id = generator_tokenizer.mask_token_id
        if written_after and mask_id is None:
            raise ValueError(
                f"num_after={n}: the generator {config.generator_name_or_path!r} has no mask token to copy at the "
                "answer slot between the two segments; use num_after=0 or a generator whose tokenizer has a mask token"
            )
        self.options[name] = {
            "down_ids": torch.tensor(down_ids),
            "gen_ids": torch.tensor(gen_ids),
            "m": m,
            "n": n,
            "written_after": written_after,
            "stop_ids": stop_ids,
            "stops_early": config.stopping != "fixed",
            "answer_sets": _answer_sets(down_ids, answer_stops, config.relation_answer_stops),
            "trained_length": config.trained_length,
            "alpha": config.leak_penalty,
            "bounded": config.leak_form == "bounded",
            "straight_through": config.token_form == "straight_through",
            "mask_id": mask_id,
            "decoder_only": not generator_config.is_encoder_decoder,
            "prefix_ids": torch.tensor(decoder_prefix(generator, generator_tokenizer)),
            "causal": causal,
        }
        self.settings[name] = {"learn_weights": False, "data_dependent": False}

    def prompt_table(self, name: str) -> torch.Tensor:
        """The prompt table the generator wrote for the current batch (``prepare``)."""
        if self._batch_table is None:
            raise ValueError(
                "PromptGen prompts depend on the input: build batches with PromptGenCollator (generator inputs are "
                "needed for every forward)"
            )
        return self._batch_table

    def _freeze_non_trainable_peft_weights(self, adapter_names: str | list[str] | None = None) -> None:
        """peft's hook after an adapter is made trainable: a LoRA generator keeps its own weights frozen."""
        super()._freeze_non_trainable_peft_weights(adapter_names)
        names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
        for name in self.lora_generators if names is None else set(names) & self.lora_generators:
            for parameter_name, parameter in self.generator[name].named_parameters():
                if "lora_" not in parameter_name:
                    parameter.requires_grad_(False)

    def end_forward(self) -> None:
        """Drop the batch's prompts (kept through ``generate()``); the batch's leak-row layout goes to ``combine``
        and no further, so a later call without generator inputs never reads it."""
        if not self._generating:
            self._batch_table = None
        self._scored_leak_rows, self._leak_rows = self._leak_rows, False

    def delete_adapter(self, adapter_name: str) -> None:
        """peft's ``delete_adapter``, with the adapter's downstream embedding and LoRA state."""
        super().delete_adapter(adapter_name)
        self._downstream.pop(adapter_name, None)
        self.lora_generators.discard(adapter_name)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """After a ``low_cpu_mem_usage`` load the generator's weights were assigned one by one: tie them again (the
        saved file holds one copy of tied embeddings), then move them as peft does."""
        if adapter_name in self.generator:
            self.generator[adapter_name].tie_weights()
        super()._move_adapter_to_device_of_base_layer(adapter_name, device)

    @contextmanager
    def generation(self, hooks: PromptHooks, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Generate the prompts once from the generator inputs, drop unused soft positions (the kept tokens end at
        the right edge, where decoding continues), and keep the prompt table for every decoding step."""
        kwargs = dict(kwargs)
        extra = {key: kwargs.pop(key) for key in self.forward_keys if key in kwargs}
        self._generating = True
        try:
            if extra:
                kwargs, _ = self.prepare(extra, kwargs, None)
            with super().generation(hooks, kwargs) as prepared:
                yield prepared
        finally:
            self._generating = False
            self._batch_table = None

    # ------------------------------------------------------------------------------------------ generation

    def generate(
        self,
        name: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        subject_ids: torch.Tensor,
        answer_sets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft tokens (G, m + n, |V_common|) and the lengths (G, 2) of the two segments actually written.

        As in the paper's Figure 1, the decoder first reads its start tokens and the subject (copied, hard), so
        the first soft token continues "<s> Dante ..." where the generator's pretraining put the relation's words.
        ``subject_ids`` holds the generator's tokens of each subject, padded with -1. An encoder-decoder reads the
        generator text with its encoder; its decoder side is not padded: a row with a shorter subject starts writing
        earlier, so every row keeps its exact positions and the whole batch decodes in one loop (rows still reading
        their subject ignore the step's output). A decoder-only generator reads ``text </s> subject`` left-padded,
        so all rows start writing together. Each linear layer of the generator computes its weight gradient once
        for all decoding steps (``one_weight_gradient_per_layer``). ``answer_sets`` picks each row's answer words
        (default: the pooled ``answer_words``). With ``trained_length`` the first segment is written to its maximum,
        its length distribution is kept in ``last_length_log_probs``, and the lengths returned are the most likely.
        """
        self.last_length_log_probs = None
        with one_weight_gradient_per_layer(self.generator[name]):
            steps, lengths, stop_probs = self._write(name, input_ids, attention_mask, subject_ids, answer_sets)
        if self.options[name]["trained_length"]:
            self.last_length_log_probs = length_log_probs(stop_probs)
            lengths = torch.stack([self.last_length_log_probs.argmax(-1), lengths[:, 1]], dim=1)
        return steps, lengths

    def _write(
        self,
        name: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        subject_ids: torch.Tensor,
        answer_sets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoding loop of ``generate``; also each row's probability of stopping before each first-segment
        token (zeros unless ``trained_length``)."""
        options, generator = self.options[name], self.generator[name]
        m, n = options["m"], options["written_after"]
        device = input_ids.device
        common = options["gen_ids"].to(device)
        embed = generator.get_input_embeddings() if options["decoder_only"] else generator.get_decoder().embed_tokens
        vocab_embeds = embed(common)
        rows = input_ids.shape[0]
        if options["decoder_only"]:
            separator = options["prefix_ids"]
            prefix_ids, prefix_mask = _decoder_only_prefix(input_ids, attention_mask, separator, subject_ids)
            step = _DecoderOnlySteps(generator, prefix_mask)
        else:
            prefix_ids = torch.cat([options["prefix_ids"].to(device).expand(rows, -1), subject_ids], dim=1)
            step = _EncoderDecoderSteps(generator, input_ids, attention_mask)
        prefix_lengths = (prefix_ids >= 0).sum(1)
        prefix = embed(prefix_ids.clamp(min=0))
        answer = embed(torch.tensor([options["mask_id"]], device=device))[0] if n else vocab_embeds[0]
        stop_before, stop_after = options["stop_ids"]
        sets = torch.zeros(rows, dtype=torch.long, device=device) if answer_sets is None else answer_sets.to(device)
        answer_stops = options["answer_sets"].to(device)[sets]  # (G, |V_common|): the words that end row's segment
        trained = options["trained_length"]
        stop_probs = torch.zeros(rows, m, device=device)
        steps = torch.zeros(rows, options["m"] + options["n"], common.numel(), device=device)
        phase = torch.zeros(rows, dtype=torch.long, device=device)
        count = torch.zeros_like(phase)
        lengths = torch.zeros(rows, 2, dtype=torch.long, device=device)
        no_stop = torch.zeros(rows, dtype=torch.bool, device=device)
        position = int(prefix_lengths.min()) - 1
        inputs = prefix[:, : position + 1]
        for _ in range(int(prefix_lengths.max()) - position - 1 + m + n + 2):
            logits = step(inputs).float()
            generating = prefix_lengths - 1 <= position
            restricted = logits.index_select(-1, common)
            best, choice = restricted.max(-1)
            if trained:  # the segment runs to its maximum; the loss weighs each length by its probability
                stop0 = no_stop
                with_stop = torch.cat([restricted, logits[:, stop_before, None]], dim=-1).softmax(-1)
                stop_prob = with_stop[:, -1] + (with_stop[:, :-1] * answer_stops).sum(-1)
                asked = (generating & (phase == 0) & (count < m)).nonzero().squeeze(-1)
                stop_probs = stop_probs.index_put((asked, count[asked]), stop_prob[asked])
            else:
                stop0 = logits[:, stop_before] > best if stop_before is not None else no_stop
                stop0 = stop0 | answer_stops.gather(1, choice.unsqueeze(1)).squeeze(1)
            stop1 = logits[:, stop_after] > best if stop_after is not None else no_stop
            dist = torch.softmax(restricted, dim=-1)
            if options["straight_through"]:  # the most likely word forward, the expectation's gradient backward
                hard = torch.nn.functional.one_hot(choice, dist.shape[-1]).to(dist.dtype)
                dist = hard + (dist - dist.detach())
            write0 = generating & (phase == 0) & ~stop0 & (count < m)
            write1 = generating & (phase == 1) & ~stop1 & (count < n)
            write = write0 | write1
            slot = torch.where(phase == 0, count, m + count)
            index = write.nonzero().squeeze(-1)
            steps = steps.index_put((index, slot[index]), dist[index])
            ends0 = generating & (phase == 0) & ~write0
            lengths[:, 0] = torch.where(write0, count + 1, lengths[:, 0])
            lengths[:, 1] = torch.where(write1, count + 1, lengths[:, 1])
            count = torch.where(write, count + 1, torch.zeros_like(count))
            after = torch.where(ends0, torch.ones_like(phase), torch.where((phase == 1) & ~write1, 2, phase))
            # the last segment at its maximum ends without asking the generator (its next output would be dropped)
            full = (after == 1) & (count == n) if n else (after <= 1) & ((after == 1) | (count == m))
            phase = torch.where(full, 2, after)
            if bool((phase == 2).all()):
                break
            position += 1
            reading = prefix[:, min(position, prefix.shape[1] - 1)]
            next_input = torch.where(write.unsqueeze(-1), dist.to(vocab_embeds.dtype) @ vocab_embeds, answer)
            inputs = torch.where(generating.unsqueeze(-1), next_input, reading).unsqueeze(1)
        return steps, lengths, stop_probs

    def prepare(
        self, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any], request: ScoreRequest | None
    ) -> tuple[dict[str, Any], ScoreRequest | None]:
        """Generate the prompts of the batch, build the per-row tables and drop unused soft positions."""
        self._none_scores = None
        if self.disable_adapters:  # the base model runs: generator inputs are neither needed nor read
            rows = inputs.get("prompt_rows")
            self._leak_rows = rows is not None and rows.numel() > 0 and rows.numel() == 2 * (int(rows.max()) + 1)
            return kwargs, request
        missing = [key for key in GENERATOR_KEYS if key not in inputs]
        if missing:
            raise ValueError(f"PromptGen batches need {list(GENERATOR_KEYS)}; missing {missing}")
        name = self.active_name
        if self._shared is not None:
            steps, lengths = self._shared
        else:
            steps, lengths = self.generate(name, inputs["generator_input_ids"], inputs["generator_attention_mask"],
                                           inputs["generator_subject_ids"], inputs.get(ANSWER_SETS))
        self.last_generation = (steps.detach(), lengths)
        length_weights = self.last_length_log_probs
        weight, scale, vocab = self._downstream[name]
        down_ids = self.options[name]["down_ids"].to(weight.device)
        table = steps @ (weight.index_select(0, down_ids).float() * scale)
        rows = inputs["prompt_rows"].to(table.device)
        self._leak_rows = rows.numel() == 2 * table.shape[0]
        self._length_weights = None
        if length_weights is not None and request is not None and request.num_choices is None:
            m = self.options[name]["m"]
            kwargs, request, rows, lengths = _one_row_per_length(kwargs, request, rows, lengths, m)
            self._length_weights = length_weights[rows[:: m + 1]]
            self._batch_table = table[rows]
            kwargs, request = _drop_unused(kwargs, request, lengths, vocab, self.options[name]["m"])
            return kwargs, request
        if self._leak_rows and request is not None and _right_padded_rows(kwargs):
            kwargs, request = self._score_none_rows_alone(inputs, kwargs, request, (steps, lengths))
            rows = rows[: table.shape[0]]
        self._batch_table = table[rows]
        if self.options[name]["stops_early"]:
            right = self._generating and self.options[name]["causal"]
            kwargs, request = _drop_unused(kwargs, request, lengths[rows], vocab, self.options[name]["m"], right,
                                           self._generating)
        return kwargs, request

    def _score_none_rows_alone(
        self,
        inputs: dict[str, torch.Tensor],
        kwargs: dict[str, Any],
        request: ScoreRequest,
        prompts: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[dict[str, Any], ScoreRequest]:
        """Run the None rows (the second half) through the downstream model in a call of their own, with the same
        prompts, and return the inputs of the examples alone; each half keeps only the columns its rows use.

        The None rows are as short as the prompt, while the examples are padded to the longest subject: in one call
        the None rows cost as much as the examples (about a quarter of a step's time on BERT-base). The scores are
        those of one call up to float rounding (padding columns are masked out of attention).
        """
        count = inputs["generator_input_ids"].shape[0]
        halves = [_rows(kwargs, part) for part in (slice(0, count), slice(count, 2 * count))]
        none_call = {
            **halves[1],
            **{key: inputs[key] for key in GENERATOR_KEYS},
            "prompt_rows": inputs["prompt_rows"][count:],
            "score_positions": request.positions[count:],
        }
        if request.candidate_ids is not None:
            none_call["candidate_ids"] = request.candidate_ids
        self._shared = prompts
        try:
            none = self._model[0](**none_call)
        finally:
            self._shared = None
            self._leak_rows = True  # the None rows' call reset it
        self._none_scores = (none["answer_log_probs"], none["logits"])
        targets = None if request.targets is None else request.targets[:count]
        main = ScoreRequest(request.positions[:count], targets, request.candidate_ids, request.num_choices,
                            request.choice_labels)
        return halves[0], main

    # ------------------------------------------------------------------------------------------ loss

    def combine(self, name: str, request: ScoreRequest, output: Any) -> Any:
        """-log P(o | T(s)) + alpha * leak(T(None)), with the None rows (if present) in the second half."""
        logits = output["logits"][:, 0]
        separate, self._none_scores = self._none_scores, None
        weights, self._length_weights = self._length_weights, None
        scores = slot_log_probs(logits, request.candidate_ids)
        if weights is not None:  # log sum_L P(L) P(o | T_L): the rows of one example's lengths are consecutive
            lengths = weights.shape[1]
            scores = torch.logsumexp(scores.view(-1, lengths, scores.shape[-1]) + weights.unsqueeze(-1), dim=1)
            best = weights.argmax(-1) + torch.arange(weights.shape[0], device=weights.device) * lengths
            output["logits"] = output["logits"][best]
            request = _first_of_each_length_group(request, lengths)
        leak_rows = self._scored_leak_rows
        half = scores.shape[0] // 2 if leak_rows and separate is None else scores.shape[0]
        main = scores[:half]
        fields: dict[str, torch.Tensor] = {"answer_log_probs": main}
        none = scores[half:] if leak_rows else None
        if separate is not None:
            none = separate[0]
            output["logits"] = torch.cat([output["logits"], separate[1]])
        if none is not None:
            fields["none_log_probs"] = none
        if request.targets is not None:
            gold = candidate_positions(request.candidate_ids, request.targets[:half, 0])
            known = gold != IGNORE
            if known.any():
                index = gold.clamp(min=0).unsqueeze(1)
                loss = -main.gather(1, index).squeeze(1)[known].mean()
                options = self.options[name]
                if none is not None and options["alpha"] > 0:
                    loss = loss + options["alpha"] * leak_term(none.gather(1, index).squeeze(1)[known], options)
                fields["loss"] = loss
        result = type(output)(loss=fields.pop("loss", None), **{k: v for k, v in output.items() if k != "loss"})
        for key, value in fields.items():
            result[key] = value
        return result


def length_log_probs(stop_probs: torch.Tensor) -> torch.Tensor:
    """log P(L), L = 0..m, from the probabilities p_t (G, m) of stopping before token t + 1:
    P(L) = p_L prod_{t<L} (1 - p_t) for L < m, and prod_{t<m} (1 - p_t) for L = m."""
    stop = stop_probs.clamp(1e-6, 1 - 1e-6)
    zeros = stop.new_zeros(stop.shape[0], 1)
    survived = torch.cat([zeros, torch.cumsum(torch.log1p(-stop), dim=1)], dim=1)
    return survived + torch.cat([stop.log(), zeros], dim=1)


def _answer_sets(down_ids: list[int], pooled: list[int], relations: dict[str, list[int]] | None) -> torch.Tensor:
    """(1 + relations, |V_common|): row 0 marks the pooled answer words, row i the i-th relation's (sorted keys)."""
    down = torch.tensor(down_ids)
    sets = [pooled, *(ids for _, ids in sorted((relations or {}).items()))]
    return torch.stack([torch.isin(down, torch.tensor(ids, dtype=torch.long)) for ids in sets])


def _one_row_per_length(
    kwargs: dict[str, Any], request: ScoreRequest, rows: torch.Tensor, lengths: torch.Tensor, m: int
) -> tuple[dict[str, Any], ScoreRequest, torch.Tensor, torch.Tensor]:
    """Repeat every downstream row once per first-segment length 0..m (consecutive rows), for ``trained_length``:
    the inputs, the score request, the prompt rows and the rows' segment lengths."""
    count, repeats = rows.shape[0], m + 1

    def repeated(value: Any) -> Any:
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == count:
            return value.repeat_interleave(repeats, dim=0)
        return value

    kwargs = {key: repeated(value) for key, value in kwargs.items()}
    candidates = request.candidate_ids  # one list for the batch, or one per row
    candidates = repeated(candidates) if candidates is not None and candidates.dim() > 1 else candidates
    request = ScoreRequest(repeated(request.positions), repeated(request.targets), candidates,
                           request.num_choices, request.choice_labels)
    lengths = lengths[rows].repeat_interleave(repeats, dim=0)
    lengths[:, 0] = torch.arange(repeats, device=lengths.device).repeat(count)
    return kwargs, request, rows.repeat_interleave(repeats), lengths


def _first_of_each_length_group(request: ScoreRequest, repeats: int) -> ScoreRequest:
    """The score request of the examples before ``_one_row_per_length`` repeated their rows."""

    def first(value: Any) -> Any:
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == request.positions.shape[0]:
            return value[::repeats]
        return value

    candidates = request.candidate_ids
    candidates = first(candidates) if candidates is not None and candidates.dim() > 1 else candidates
    return ScoreRequest(first(request.positions), first(request.targets), candidates, request.num_choices,
                        request.choice_labels)


def leak_term(leaked: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
    """The leak penalty of the gold answers' log-probabilities under the None prompts (before alpha)."""
    leak = -torch.log1p(-leaked.exp().clamp(max=1 - 1e-6)) if options["bounded"] else leaked
    return leak.mean()


def decoder_prefix(generator: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The generator tokens just before the copied subject.

    An encoder-decoder starts with its start token, then the tokenizer's bos when the generator's targets begin
    with it (BART decodes ``</s> <s> words``; T5 has no bos): generating the first word right after the start token
    would ask the generator for a position it was never trained to fill. A decoder-only generator reads the
    generator text, then ``</s>`` (its eos, when it has one) as the separator before the subject.
    """
    if not generator.config.is_encoder_decoder:
        eos = tokenizer.eos_token_id
        return [] if eos is None else [eos]
    start = generator.config.decoder_start_token_id
    bos = tokenizer.bos_token_id
    if start is None:
        raise ValueError(f"the generator {type(generator).__name__} has no decoder_start_token_id in its config")
    if bos is not None and bos != start and tokenizer("a").input_ids[:1] == [bos]:
        return [start, bos]
    return [start]


def _stop_ids(
    stopping: str, tokenizer: PreTrainedTokenizerBase, generator: nn.Module, written_after: int
) -> tuple[int | None, int | None]:
    """The token whose being most likely ends the segment before / after the answer slot (None: only the maximum)."""
    if stopping == "fixed":
        return None, None
    eos = generator.config.eos_token_id if generator.config.eos_token_id is not None else tokenizer.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    before = tokenizer.mask_token_id if stopping == "mask" else eos
    if before is None:
        missing = "mask token" if stopping == "mask" else "eos token"
        raise ValueError(
            f"stopping={stopping!r} ends a segment where the generator's {missing} is most likely, but the generator "
            f"{tokenizer.name_or_path!r} has none; use stopping='eos' or stopping='fixed'"
        )
    if written_after and eos is None:
        raise ValueError(
            f"stopping={stopping!r} ends the segment after the answer slot where </s> is most likely, but the "
            f"generator {tokenizer.name_or_path!r} has no eos token; use stopping='fixed' or num_after=0"
        )
    return before, eos


class _Extend(torch.autograd.Function):
    """``past`` followed by ``new`` along the positions (dim -2), as a view of ``buffer`` written in place."""

    @staticmethod
    def forward(ctx: Any, past: torch.Tensor, new: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        start = past.shape[-2]
        # written through .data: the views of earlier steps, which attention keeps for its backward, read positions
        # that are never written again, and must not see their version change
        if past.data_ptr() != buffer.data_ptr():
            buffer.data[..., :start, :] = past
        buffer.data[..., start : start + new.shape[-2], :] = new
        ctx.start = start
        return buffer[..., : start + new.shape[-2], :]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        return grad[..., : ctx.start, :], grad[..., ctx.start :, :], None


class _GrowingLayer(DynamicLayer):
    """A self-attention cache layer of the decoding loop whose keys and values grow inside one buffer each.

    transformers' ``DynamicLayer`` concatenates a new copy of the cache at every step, and with gradients each step's
    attention keeps its copy for the backward: memory quadratic in the number of steps (439 MiB for BART-base writing
    15 tokens after subjects of 22-29 tokens, batch 16). Here every step's keys and values are views of one buffer
    (doubled, with a copy, when full), so the steps share their positions; values and gradients are the same.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.keys, self.values = (states.new_empty(*states.shape[:-2], 0, states.shape[-1])
                                  for states in (key_states, value_states))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = _extend(self.keys, key_states)
        self.values = _extend(self.values, value_states)
        return self.keys, self.values


def _extend(past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``past`` and ``new`` along the positions, in ``past``'s buffer when it has room, else in a new one twice the
    length."""
    length = past.shape[-2] + new.shape[-2]
    buffer = past if past._base is None else past._base
    if buffer.shape[-2] < length:
        buffer = new.new_empty(*new.shape[:-2], 2 * length, new.shape[-1])
    return _Extend.apply(past, new, buffer)


def _growing_cache(config: Any) -> Cache:
    """The cache the generator builds for itself, its plain full-attention layers replaced by growing ones (sliding
    window and other layer kinds are kept as the model declares them)."""
    cache = DynamicCache(config=config)
    cache.layers = [_GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = _GrowingLayer
    return cache


class _EncoderDecoderSteps:
    """One decoder step of an encoder-decoder generator per call (the encoder runs once), with the key/value cache."""

    def __init__(self, generator: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.generator = generator
        self.attention_mask = attention_mask
        self.encoder_out = generator.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        self.cache: Cache = EncoderDecoderCache(_growing_cache(generator.config), DynamicCache(config=generator.config))

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Next-token logits (G, V) after the decoder inputs ``inputs`` (G, T, d)."""
        out = self.generator(encoder_outputs=self.encoder_out, attention_mask=self.attention_mask,
                             decoder_inputs_embeds=inputs, cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[:, -1]


class _DecoderOnlySteps:
    """The left-padded prefix, then one token per call, of a decoder-only generator with the key/value cache."""

    def __init__(self, generator: nn.Module, prefix_mask: torch.Tensor) -> None:
        self.generator = generator
        self.mask = prefix_mask
        self.positions = (prefix_mask.cumsum(1) - 1).clamp(min=0)
        self.cache = _growing_cache(generator.config)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Next-token logits (G, V) after ``inputs`` (G, T, d): the prefix first, then one soft token at a time."""
        if self.cache.get_seq_length():
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], inputs.shape[1])], dim=1)
            self.positions = self.positions[:, -1:] + torch.arange(1, inputs.shape[1] + 1, device=inputs.device)
        out = self.generator(inputs_embeds=inputs, attention_mask=self.mask, position_ids=self.positions,
                             cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1]


def _decoder_only_prefix(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, separator: torch.Tensor, subject_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's generator text (padding removed), the separator and its subject, left-padded to one width: ids
    (padding 0, masked) and the attention mask."""
    rows = [
        torch.cat([text[mask.bool()], separator.to(text.device), subject[subject >= 0]])
        for text, mask, subject in zip(input_ids, attention_mask, subject_ids, strict=True)
    ]
    width = max(len(row) for row in rows)
    ids = input_ids.new_zeros(len(rows), width)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = row
        mask[index, width - len(row) :] = 1
    return ids, mask


_ENCODER_KEYS = ("input_ids", "attention_mask", "token_type_ids", "prompt_ids", "inputs_embeds")
_DECODER_KEYS = ("decoder_input_ids", "decoder_attention_mask")


def _drop_unused(
    kwargs: dict[str, Any],
    request: ScoreRequest | None,
    lengths: torch.Tensor,
    vocab: int,
    m: int,
    right: bool = False,
    right_decoder: bool = False,
) -> tuple[dict[str, Any], ScoreRequest | None]:
    """Remove the soft positions a stopped segment did not write from the inputs (``prompt_ids`` with
    ``inputs_embeds`` too) and from a decoder input that copies them, answer slot included.

    The kept tokens move left (``right=False``, padding after them) or right (padding before them: left-padded
    inputs, and prompts a causal LM continues in ``generate()``). Score positions follow the tokens they index.
    """
    kwargs = dict(kwargs)
    encoder_ids = kwargs.get("prompt_ids", kwargs.get("input_ids"))
    index = None
    if encoder_ids is not None:
        mask = kwargs.get("attention_mask")
        index = _pack(kwargs, _ENCODER_KEYS, encoder_ids, lengths, vocab, m, right or _left_padded(mask))
    decoder_ids = kwargs.get("decoder_input_ids")
    if decoder_ids is not None:
        mask = kwargs.get("decoder_attention_mask")
        index = _pack(kwargs, _DECODER_KEYS, decoder_ids, lengths, vocab, m, right_decoder or _left_padded(mask))
    if request is not None and index is not None:
        request.positions = index.gather(1, request.positions)
    return kwargs, request


def _left_padded(mask: torch.Tensor | None) -> bool:
    return mask is not None and bool((mask[:, 0] == 0).any()) and bool((mask[:, -1] == 1).all())


def _pack(
    kwargs: dict[str, Any], keys: tuple[str, ...], ids: torch.Tensor, lengths: torch.Tensor, vocab: int, m: int,
    right: bool,
) -> torch.Tensor:
    """Pack the tensors of ``keys`` without the unused soft positions of ``ids``; return each old position's new one."""
    soft = ids - vocab
    pseudo = ids >= vocab
    unused = pseudo & (((soft < m) & (soft >= lengths[:, :1])) | ((soft >= m) & (soft - m >= lengths[:, 1:])))
    keep = ~unused
    kept = keep.sum(1, keepdim=True)
    width = int(kept.max())
    new_index = keep.long().cumsum(1) - 1 + (width - kept if right else 0)
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(ids)
    for key in keys:
        value = kwargs.get(key)
        if value is not None:
            packed = value.new_zeros((ids.shape[0], width, *value.shape[2:]))
            kwargs[key] = packed.index_put((rows[keep], new_index[keep]), value[keep])
    return new_index


#: the downstream inputs with one row per example that the None rows' own call takes (a PromptGenCollator batch)
_ROW_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _right_padded_rows(kwargs: dict[str, Any]) -> bool:
    """Whether the downstream inputs are only ``_ROW_INPUTS`` with an attention mask, padded on the right (trimming
    columns then keeps every position id)."""
    mask = kwargs.get("attention_mask")
    return (
        mask is not None and mask.dim() == 2 and set(kwargs) <= set(_ROW_INPUTS) and bool(mask[:, 0].all())
        and not _left_padded(mask)
    )


def _rows(kwargs: dict[str, Any], part: slice) -> dict[str, Any]:
    """The rows ``part`` of the downstream inputs, without the trailing columns all of them leave padded."""
    used = kwargs["attention_mask"][part].any(0).nonzero()
    width = int(used.max()) + 1 if used.numel() else 1
    return {key: value[part, :width] for key, value in kwargs.items()}


def _creating_on_meta() -> bool:
    """Whether new parameters land on the meta device (peft's ``low_cpu_mem_usage`` loading context)."""
    probe = nn.Module()
    probe.register_parameter("probe", nn.Parameter(torch.empty(0)))
    return probe.probe.is_meta


class PromptGenModel(PromptTuner):
    """PEFT tuner of PromptGenConfig."""

    prefix = "promptgen_"
    layer_cls = PromptGenLayer
    tuner_layer_cls = PromptGenLayer

    def generated_prompts(self, batch: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """The prompt of every example as text: the highest-probability word of each soft token (paper Table 3),
        joined as the tokenizer writes text (byte-level BPE words read as words, not as their ``Ġ`` tokens)."""
        with torch.no_grad():
            self.model(**batch)
        state = self.state
        if not isinstance(state, PromptGenLayer) or state.last_generation is None:
            raise RuntimeError("the forward wrote no prompts; expected a batch of PromptGenCollator")
        steps, lengths = state.last_generation
        options = state.options[self.active_adapter]
        words = options["down_ids"][steps.argmax(-1).cpu()]
        m = options["m"]
        texts = []
        for row, (before, after) in enumerate(lengths.tolist()):
            segments = (words[row, :before], words[row, m : m + after])
            first, second = (tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(ids.tolist())).strip()
                             for ids in segments)
            texts.append(" ".join(part for part in (first, tokenizer.mask_token or "[Y]", second) if part))
        return texts


class PromptGenCollator(PromptCollator):
    """Downstream rows as PromptCollator builds them, plus the generator's input for every example.

    The generator reads the example's manual template (key ``template``, e.g. ``"[X] was born in [Y] ."``) with the
    subject filled in and ``[Y]`` as its mask token; its decoder starts from the subject's tokens. With
    ``leak_rows`` every example also gets a downstream row whose subject is the config's ``none_subject`` ("None"),
    scored by the leak penalty and the None diagnostic.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: nn.Module,
        generator_tokenizer: PreTrainedTokenizerBase | None = None,
        leak_rows: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, model, **kwargs)
        tuner = getattr(model, "base_model", model)
        self.config = tuner.peft_config[tuner.active_adapter]
        self.generator_tokenizer = generator_tokenizer or AutoTokenizer.from_pretrained(
            self.config.generator_name_or_path
        )
        self.leak_rows = leak_rows

    def generator_text(self, example: Any, subject: str) -> str:
        """The generator's input: the example's manual template with ``subject`` and the generator's mask at [Y]."""
        if not isinstance(example, dict) or "template" not in example:
            raise KeyError(
                "PromptGen examples are dicts with the relation's manual template under 'template' "
                f"(e.g. '[X] was born in [Y] .'); got {example!r}"
            )
        template = example["template"]
        if not isinstance(template, str) or template.count("[X]") < 1 or template.count("[Y]") != 1:
            raise TemplateError(
                f"the generator's template {template!r} needs the subject field [X] and exactly one answer slot [Y] "
                "(e.g. '[X] was born in [Y] .'): the generator reads the subject and the slot from it"
            )
        mask = self.generator_tokenizer.mask_token or "<mask>"
        return template.replace("[X]", subject).replace("[Y]", mask)

    def __call__(self, examples: Any) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("cannot build a batch from an empty list of examples")
        downstream = list(examples)
        if self.leak_rows:
            none = self.config.none_subject
            downstream += [{**example, "X": none, "sub": none, "subject": none} for example in examples]
        batch = super().__call__(downstream)
        batch.update(self.generator_inputs(examples))
        rows = torch.arange(len(examples))
        batch["prompt_rows"] = torch.cat([rows, rows]) if self.leak_rows else rows
        return batch

    def generator_inputs(self, examples: Any) -> dict[str, torch.Tensor]:
        """The generator's input (the manual template with the subject), the subject's generator tokens and, with
        ``relation_answer_words``, each example's set of answer words (by its template)."""
        subjects = [self.split_example(example)[0]["X"] for example in examples]
        texts = [self.generator_text(example, subject) for example, subject in zip(examples, subjects, strict=True)]
        encoded = self.generator_tokenizer(texts, padding=True, return_tensors="pt")
        subject_ids = self.generator_tokenizer(subjects, add_special_tokens=False)["input_ids"]
        width = max(len(ids) for ids in subject_ids)
        inputs = {
            "generator_input_ids": encoded["input_ids"],
            "generator_attention_mask": encoded["attention_mask"],
            "generator_subject_ids": torch.tensor([ids + [-1] * (width - len(ids)) for ids in subject_ids]),
        }
        if self.config.relation_answer_words:  # 0: the pooled answer_words; i: the i-th relation's, as in the layer
            index = {template: i + 1 for i, template in enumerate(sorted(self.config.relation_answer_words))}
            inputs[ANSWER_SETS] = torch.tensor([index.get(example["template"], 0) for example in examples])
        return inputs

    def inputs(self, examples: Any, template: int = 0) -> BatchEncoding:
        """``PromptCollator.inputs`` plus the generator inputs of every example (dicts with the subject under ``X``
        and the relation's manual template under ``template``), for ``model(**inputs)`` and ``model.generate``."""
        examples = [examples] if isinstance(examples, dict) else list(examples)
        encoded = super().inputs(examples, template)
        encoded.update(self.generator_inputs(examples))
        encoded["prompt_rows"] = torch.arange(len(examples))
        return encoded
