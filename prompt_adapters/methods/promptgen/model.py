"""PromptGen: a fine-tuned encoder-decoder generates, for every input, soft prompt tokens for a frozen model.

Each generated token is a distribution D_t over the vocabulary both models share. The decoder starts from the copied
subject; it reads each D_t back as the expectation of its own embeddings (the next decoder input, reusing the
key/value cache, so m + n tokens cost m + n + 2 decoder steps after the longest subject), and the downstream
model receives the expectation of *its* embeddings at the pseudo positions of ``[X] [P*m] [Y] [P*n]``. With the
paper's stopping rule, unused soft positions are removed from the downstream input before it runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase

from prompt_adapters.data.collator import PromptCollator
from prompt_adapters.injection import ScoreRequest
from prompt_adapters.methods.mixture.model import MixturePromptLayer, MixturePromptModel
from prompt_adapters.scoring import IGNORE, candidate_positions, slot_log_probs
from prompt_adapters.tuner import PromptConfig, _embed_scale

GENERATOR_KEYS = ("generator_input_ids", "generator_attention_mask", "generator_subject_ids", "prompt_rows")


class PromptGenLayer(MixturePromptLayer):
    """The generator (trainable) and the shared vocabulary of each adapter; per-batch prompt tables."""

    adapter_layer_names = ("generator",)
    other_param_names = ("templates", "settings", "options")
    forward_keys = GENERATOR_KEYS

    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.ModuleDict()
        self.options: dict[str, dict[str, Any]] = {}
        self._downstream: dict[str, tuple[torch.Tensor, float, int]] = {}
        self._batch_table: torch.Tensor | None = None
        self._leak_rows = False
        self.last_generation: tuple[torch.Tensor, torch.Tensor] | None = None

    def create(self, name: str, config: PromptConfig, model: nn.Module, init_ids: list[int]) -> None:
        generator = AutoModelForSeq2SeqLM.from_pretrained(config.generator_name_or_path).float()
        generator_tokenizer = AutoTokenizer.from_pretrained(config.generator_name_or_path)
        self.generator[name] = generator
        down_ids, gen_ids = config.common_vocab  # type: ignore[attr-defined]
        embedding = model.get_input_embeddings()
        scale = _embed_scale(embedding, embedding.weight)
        self._downstream[name] = (embedding.weight, scale, embedding.weight.shape[0])
        self.options[name] = {
            "down_ids": torch.tensor(down_ids),
            "gen_ids": torch.tensor(gen_ids),
            "m": config.num_before,  # type: ignore[attr-defined]
            "n": config.num_after,  # type: ignore[attr-defined]
            "paper_stopping": config.stopping == "paper",  # type: ignore[attr-defined]
            "alpha": config.leak_penalty,  # type: ignore[attr-defined]
            "bounded": config.leak_form == "bounded",  # type: ignore[attr-defined]
            "mask_id": generator_tokenizer.mask_token_id,
            "prefix_ids": torch.tensor(decoder_prefix(generator, generator_tokenizer)),
        }
        self.settings[name] = {"learn_weights": False, "data_dependent": False}
        self.mixture[name] = nn.Parameter(torch.zeros(1), requires_grad=False)

    def prompt_table(self, name: str) -> torch.Tensor:
        if self._batch_table is None:
            raise ValueError(
                "PromptGen prompts depend on the input: build batches with PromptGenCollator (generator inputs are "
                "needed for every forward)"
            )
        return self._batch_table

    def end_forward(self) -> None:
        self._batch_table = None

    # ------------------------------------------------------------------------------------------ generation

    def generate(
        self, name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, subject_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft tokens (G, m + n, |V_common|) and the lengths (G, 2) of the two segments actually written.

        As in the paper's Figure 1, the decoder first reads its start tokens and the subject (copied, hard), so
        the first soft token continues "<s> Dante ..." where the generator's pretraining put the relation's words.
        ``subject_ids`` holds the generator's tokens of each subject, padded with -1. Rows are not padded on the
        decoder side: a row with a shorter subject starts writing earlier, so every row keeps its exact positions
        and the whole batch decodes in one loop (rows still reading their subject ignore the step's output).
        """
        options, generator = self.options[name], self.generator[name]
        m, n = options["m"], options["n"]
        device = input_ids.device
        common = options["gen_ids"].to(device)
        decoder = generator.get_decoder()
        vocab_embeds = decoder.embed_tokens(common)
        special = decoder.embed_tokens(
            torch.tensor([generator.config.decoder_start_token_id, options["mask_id"]], device=device)
        )
        eos = generator.config.eos_token_id
        rows = input_ids.shape[0]
        prefix_ids = torch.cat([options["prefix_ids"].to(device).expand(rows, -1), subject_ids], dim=1)
        prefix_lengths = (prefix_ids >= 0).sum(1)
        prefix = decoder.embed_tokens(prefix_ids.clamp(min=0))
        encoder_out = generator.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        steps = torch.zeros(rows, m + n, common.numel(), device=device)
        phase = torch.zeros(rows, dtype=torch.long, device=device)
        count = torch.zeros_like(phase)
        lengths = torch.zeros(rows, 2, dtype=torch.long, device=device)
        position = int(prefix_lengths.min()) - 1
        inputs = prefix[:, : position + 1]
        cache = None
        for _ in range(int(prefix_lengths.max()) - position - 1 + m + n + 2):
            out = generator(encoder_outputs=encoder_out, attention_mask=attention_mask, decoder_inputs_embeds=inputs,
                            past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            generating = prefix_lengths - 1 <= position
            logits = out.logits[:, -1].float()
            restricted = logits.index_select(-1, common)
            stop = logits[:, eos] > restricted.max(-1).values if options["paper_stopping"] else torch.zeros_like(phase)
            dist = torch.softmax(restricted, dim=-1)
            write0 = generating & (phase == 0) & ~stop.bool() & (count < m)
            write1 = generating & (phase == 1) & ~stop.bool() & (count < n)
            write = write0 | write1
            slot = torch.where(phase == 0, count, m + count)
            index = write.nonzero().squeeze(-1)
            steps = steps.index_put((index, slot[index]), dist[index])
            ends0 = generating & (phase == 0) & ~write0
            lengths[:, 0] = torch.where(write0, count + 1, lengths[:, 0])
            lengths[:, 1] = torch.where(write1, count + 1, lengths[:, 1])
            position += 1
            reading = prefix[:, min(position, prefix.shape[1] - 1)]
            filler = torch.where(ends0.unsqueeze(-1), special[1], special[0])
            next_input = torch.where(write.unsqueeze(-1), dist @ vocab_embeds, filler)
            inputs = torch.where(generating.unsqueeze(-1), next_input, reading).unsqueeze(1)
            count = torch.where(write, count + 1, torch.zeros_like(count))
            phase = torch.where(ends0, torch.ones_like(phase), torch.where((phase == 1) & ~write1, 2, phase))
            if bool((phase == 2).all()):
                break
        return steps, lengths

    def prepare(
        self, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any], request: ScoreRequest | None
    ) -> tuple[dict[str, Any], ScoreRequest | None]:
        """Generate the prompts of the batch, build the per-row tables and drop unused soft positions."""
        missing = [key for key in GENERATOR_KEYS if key not in inputs]
        if missing:
            raise ValueError(f"PromptGen batches need {list(GENERATOR_KEYS)}; missing {missing}")
        name = self.active_name
        if self.disable_adapters:
            return kwargs, request
        steps, lengths = self.generate(name, inputs["generator_input_ids"], inputs["generator_attention_mask"],
                                       inputs["generator_subject_ids"])
        self.last_generation = (steps.detach(), lengths)
        weight, scale, vocab = self._downstream[name]
        down_ids = self.options[name]["down_ids"].to(weight.device)
        table = steps @ (weight.index_select(0, down_ids).float() * scale)
        rows = inputs["prompt_rows"].to(table.device)
        self._batch_table = table[rows]
        self._leak_rows = rows.numel() == 2 * table.shape[0]
        if self.options[name]["paper_stopping"]:
            kwargs, request = _drop_unused(kwargs, request, lengths[rows], vocab, self.options[name]["m"])
        return kwargs, request

    # ------------------------------------------------------------------------------------------ loss

    def combine(self, name: str, request: ScoreRequest, output: Any) -> Any:
        """-log P(o | T(s)) + alpha * leak(T(None)), with the None rows (if present) in the second half."""
        logits = output["logits"][:, 0]
        half = logits.shape[0] // 2 if self._leak_rows else logits.shape[0]
        main = slot_log_probs(logits[:half], request.candidate_ids)
        fields: dict[str, torch.Tensor] = {"answer_log_probs": main}
        none = slot_log_probs(logits[half:], request.candidate_ids) if self._leak_rows else None
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
                    leaked = none.gather(1, index).squeeze(1)[known]
                    leak = -torch.log1p(-leaked.exp().clamp(max=1 - 1e-6)) if options["bounded"] else leaked
                    loss = loss + options["alpha"] * leak.mean()
                fields["loss"] = loss
        result = type(output)(loss=fields.pop("loss", None), **{k: v for k, v in output.items() if k != "loss"})
        for key, value in fields.items():
            result[key] = value
        return result


def decoder_prefix(generator: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The decoder tokens before the first generated word: the start token, then the tokenizer's bos when the
    generator's targets begin with it (BART decodes ``</s> <s> words``; T5 has no bos). Generating the first word
    right after the start token would ask the generator for a position it was never trained to fill."""
    start = generator.config.decoder_start_token_id
    bos = tokenizer.bos_token_id
    if start is None:
        raise ValueError(f"the generator {type(generator).__name__} has no decoder_start_token_id in its config")
    if bos is not None and bos != start and tokenizer("a").input_ids[:1] == [bos]:
        return [start, bos]
    return [start]


def _drop_unused(
    kwargs: dict[str, Any], request: ScoreRequest | None, lengths: torch.Tensor, vocab: int, m: int
) -> tuple[dict[str, Any], ScoreRequest | None]:
    """Remove the soft positions a stopped segment did not write, shifting the rest left (answer slot included)."""
    ids = kwargs["input_ids"]
    soft = ids - vocab
    pseudo = ids >= vocab
    unused = pseudo & (((soft < m) & (soft >= lengths[:, :1])) | ((soft >= m) & (soft - m >= lengths[:, 1:])))
    keep = ~unused
    new_index = keep.long().cumsum(1) - 1
    width = int(keep.sum(1).max())
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(ids)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if kwargs.get(key) is not None:
            value = kwargs[key]
            packed = torch.zeros(ids.shape[0], width, dtype=value.dtype, device=value.device)
            kwargs[key] = packed.index_put((rows[keep], new_index[keep]), value[keep])
    if request is not None:
        request.positions = new_index.gather(1, request.positions)
    return kwargs, request


class PromptGenModel(MixturePromptModel):
    """PEFT tuner of PromptGenConfig."""

    prefix = "promptgen_"
    layer_cls = PromptGenLayer
    tuner_layer_cls = PromptGenLayer

    def generated_prompts(self, batch: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """The prompt of every example as text: the highest-probability word of each soft token (paper Table 3)."""
        with torch.no_grad():
            self.model(**batch)
        steps, lengths = self.state.last_generation  # type: ignore[misc]
        options = self.state.options[self.active_adapter]
        words = options["down_ids"][steps.argmax(-1).cpu()]
        m = options["m"]
        texts = []
        for row, (before, after) in enumerate(lengths.tolist()):
            first = tokenizer.convert_ids_to_tokens(words[row, :before].tolist())
            second = tokenizer.convert_ids_to_tokens(words[row, m : m + after].tolist())
            texts.append(" ".join([*first, tokenizer.mask_token or "[Y]", *second]))
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
        if not isinstance(example, dict) or "template" not in example:
            raise KeyError(
                "PromptGen examples are dicts with the relation's manual template under 'template' "
                f"(e.g. '[X] was born in [Y] .'); got {example!r}"
            )
        mask = self.generator_tokenizer.mask_token or "<mask>"
        return example["template"].replace("[X]", subject).replace("[Y]", mask)

    def __call__(self, examples: Any) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("cannot build a batch from an empty list of examples")
        downstream = list(examples)
        if self.leak_rows:
            none = self.config.none_subject
            downstream += [{**example, "X": none, "sub": none, "subject": none} for example in examples]
        batch = super().__call__(downstream)
        subjects = [self.split_example(example)[0]["X"] for example in examples]
        texts = [self.generator_text(example, subject) for example, subject in zip(examples, subjects, strict=True)]
        encoded = self.generator_tokenizer(texts, padding=True, return_tensors="pt")
        batch["generator_input_ids"] = encoded["input_ids"]
        batch["generator_attention_mask"] = encoded["attention_mask"]
        subject_ids = self.generator_tokenizer(subjects, add_special_tokens=False)["input_ids"]
        width = max(len(ids) for ids in subject_ids)
        batch["generator_subject_ids"] = torch.tensor([ids + [-1] * (width - len(ids)) for ids in subject_ids])
        rows = torch.arange(len(examples))
        batch["prompt_rows"] = torch.cat([rows, rows]) if self.leak_rows else rows
        return batch
