"""The vocabulary a generator and a downstream model share (PromptGen's V_common)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from prompt_adapters.template import encode_fragment


def common_vocabulary(
    downstream: PreTrainedTokenizerBase, generator: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    """Pairs (downstream id, generator id) of the words both tokenizers hold as one word-initial token.

    A word counts when each tokenizer encodes it, after a space, as a single token: ``Paris`` for WordPiece,
    ``ĠParis`` for byte-level BPE, ``▁Paris`` for SentencePiece. Special tokens and word-internal pieces (``##s``)
    are skipped. Order follows the downstream vocabulary ids.
    """
    special = set(downstream.all_special_tokens)
    down_ids: list[int] = []
    gen_ids: list[int] = []
    seen: set[int] = set()
    for token, token_id in sorted(downstream.get_vocab().items(), key=lambda item: item[1]):
        if token in special or token.startswith("##") or not token.strip():
            continue
        word = downstream.convert_tokens_to_string([token]).strip()
        if not word or encode_fragment(downstream, word, True) != [token_id]:
            continue
        generated = encode_fragment(generator, word, True)
        if len(generated) != 1 or generated[0] in seen or generated[0] == generator.unk_token_id:
            continue
        seen.add(generated[0])
        down_ids.append(token_id)
        gen_ids.append(generated[0])
    if not down_ids:
        raise ValueError(
            f"the downstream tokenizer {type(downstream).__name__} ({len(downstream)} tokens) and the generator "
            f"tokenizer {type(generator).__name__} ({len(generator)} tokens) share no word; PromptGen needs a common "
            "vocabulary to turn generated distributions into downstream embeddings"
        )
    return down_ids, gen_ids
