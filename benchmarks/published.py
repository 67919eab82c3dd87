"""Published LAMA numbers (methods-spec Appendix A), keyed by the setting they were measured in.

Key: (method, prompts, model, candidate set). P@1 / P@10 / MRR in percent, macro over the 41 T-REx relations.
The Qin & Eisner cells come from OCR-damaged talk slides whose protocol is not stated (their code ranks over the full
vocabulary and pools facts); they are listed under "full" and marked as such in ``source``.
"""

from __future__ import annotations

PUBLISHED: dict[tuple[str, str, str, str], dict[str, float | str]] = {
    ("manual", "manual", "bert-base-cased", "common_vocab_cased"): {
        "P@1": 31.1, "source": "P-tuning Table 2 (LAMA-34k); PromptGen Table 1"},
    ("manual", "manual", "bert-large-cased", "common_vocab_cased"): {"P@1": 32.3, "source": "P-tuning Table 2"},
    ("manual", "manual", "bert-base-cased", "29k"): {"P@1": 31.7, "source": "P-tuning Table 2 (LAMA-29k)"},
    ("manual", "manual", "bert-large-cased", "29k"): {"P@1": 33.5, "source": "P-tuning Table 2 (LAMA-29k)"},
    ("manual", "manual", "roberta-base", "29k"): {"P@1": 18.4, "source": "P-tuning Table 2 (LAMA-29k)"},
    ("manual", "manual", "roberta-large", "29k"): {"P@1": 22.1, "source": "P-tuning Table 2 (LAMA-29k)"},
    ("manual", "manual", "gpt2-medium", "29k"): {"P@1": 20.3, "source": "P-tuning Table 2 (LAMA-29k)"},
    ("manual", "manual", "gpt2-xl", "29k"): {"P@1": 22.8, "source": "P-tuning Table 2 (LAMA-29k)"},
    ("manual", "lpaqa_top1", "bert-base-cased", "common_vocab_cased"): {"P@1": 34.1, "source": "PromptGen Table 1"},
    ("manual", "lpaqa_top1", "bert-large-cased", "common_vocab_cased"): {"P@1": 39.4, "source": "P-tuning Table 2"},
    # Qin & Eisner slides, Table A.1a (T-REx original): soft and deep cells
    ("mixture", "manual", "bert-base-cased", "full"): {
        "P@1": 45.7, "P@10": 75.8, "MRR": 56.2, "source": "Qin & Eisner slides A.1a Soft (sin.), protocol unstated"},
    ("deep", "manual", "bert-base-cased", "full"): {
        "P@1": 47.7, "P@10": 79.0, "MRR": 58.4, "source": "Qin & Eisner slides A.1a Soft (sin.) deep"},
    ("mixture", "lpaqa_mined", "bert-base-cased", "full"): {
        "P@1": 48.8, "P@10": 79.6, "MRR": 59.4, "source": "Qin & Eisner slides A.1a Soft (min.)"},
    ("deep", "lpaqa_mined", "bert-base-cased", "full"): {
        "P@1": 50.7, "P@10": 80.7, "MRR": 61.1, "source": "Qin & Eisner slides A.1a Soft (min.) deep"},
    ("mixture", "lpaqa_paraphrase", "bert-base-cased", "full"): {
        "P@1": 46.9, "P@10": 78.8, "MRR": 57.8, "source": "Qin & Eisner slides A.1a Soft (par.)"},
    ("deep", "lpaqa_paraphrase", "bert-base-cased", "full"): {
        "P@1": 48.4, "P@10": 79.6, "MRR": 59.1, "source": "Qin & Eisner slides A.1a Soft (par.) deep"},
    ("mixture", "manual", "bert-large-cased", "full"): {
        "P@1": 45.8, "P@10": 76.7, "MRR": 56.5, "source": "Qin & Eisner slides A.1a Soft (sin.)"},
    ("deep", "manual", "bert-large-cased", "full"): {
        "P@1": 51.1, "P@10": 81.1, "MRR": 61.5, "source": "Qin & Eisner slides A.1a Soft (sin.) deep"},
    ("mixture", "lpaqa_mined", "bert-large-cased", "full"): {
        "P@1": 51.0, "P@10": 81.4, "MRR": 61.6, "source": "Qin & Eisner slides A.1a Soft (min.)"},
    ("deep", "lpaqa_mined", "bert-large-cased", "full"): {
        "P@1": 51.6, "P@10": 81.9, "MRR": 62.1, "source": "Qin & Eisner slides A.1a Soft (min.) deep"},
    ("mixture", "lpaqa_paraphrase", "bert-large-cased", "full"): {
        "P@1": 48.6, "P@10": 80.0, "MRR": 59.6, "source": "Qin & Eisner slides A.1a Soft (par.)"},
    ("deep", "lpaqa_paraphrase", "bert-large-cased", "full"): {
        "P@1": 51.1, "P@10": 81.7, "MRR": 61.7, "source": "Qin & Eisner slides A.1a Soft (par.) deep"},
    # OptiPrompt with manual initialisation = a single soft prompt (K = 1) on the LAMA protocol
    ("mixture", "manual", "bert-base-cased", "common_vocab_cased"): {
        "P@1": 48.6, "source": "OptiPrompt (manual init), as quoted in PromptGen Table 1"},
}


def published(method: str, prompts: str, model: str, candidates: str) -> dict[str, float | str] | None:
    """The published row for this setting, matching the model by its last path component."""
    return PUBLISHED.get((method, prompts, model.rstrip("/").split("/")[-1], candidates))
