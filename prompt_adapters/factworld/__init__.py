"""FactWorld: a synthetic world of facts, small LMs pretrained on text stating them, and LAMA-format probes.

It lets the test-suite and benchmarks measure, without downloading a checkpoint, whether a prompt
method extracts knowledge a frozen LM has: the models know every fact (they memorised the corpus),
but the corpus never uses the LAMA manual template, so the manual prompt scores low and a good
prompt method should close the gap. ``build_world`` writes everything; see docs/factworld.md.
"""

from prompt_adapters.factworld.build import (
    MODEL_KINDS,
    PORTABLE_KERNELS,
    SIZES,
    BuildConfig,
    build_world,
    cpu_identity,
    format_report,
    probe_templates,
    train_model,
    with_epochs,
)
from prompt_adapters.factworld.corpus import Sentence, fill, generate_corpus, mine_prompts, template_frequencies
from prompt_adapters.factworld.lama import relation_type, write_lama
from prompt_adapters.factworld.pretrain import TrainSpec, build_model, encode_corpus, pretrain
from prompt_adapters.factworld.probe import evaluate, object_logits, precision_at_1
from prompt_adapters.factworld.tokenization import (
    object_token_id,
    train_bart_tokenizer,
    train_gpt2_tokenizer,
    train_wordlevel_tokenizer,
)
from prompt_adapters.factworld.world import COMPOUNDS, RELATIONS, RelationSpec, World, WorldSize, generate_world

__all__ = [
    "COMPOUNDS",
    "MODEL_KINDS",
    "PORTABLE_KERNELS",
    "RELATIONS",
    "SIZES",
    "BuildConfig",
    "RelationSpec",
    "Sentence",
    "TrainSpec",
    "World",
    "WorldSize",
    "build_model",
    "build_world",
    "cpu_identity",
    "encode_corpus",
    "evaluate",
    "fill",
    "format_report",
    "generate_corpus",
    "generate_world",
    "mine_prompts",
    "object_logits",
    "object_token_id",
    "precision_at_1",
    "pretrain",
    "probe_templates",
    "relation_type",
    "template_frequencies",
    "train_bart_tokenizer",
    "train_gpt2_tokenizer",
    "train_model",
    "train_wordlevel_tokenizer",
    "with_epochs",
    "write_lama",
]
