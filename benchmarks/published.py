"""Published LAMA and SuperGLUE numbers, keyed by the setting they were measured in.

LAMA (methods-spec Appendix A): key (method, prompts, model, candidate set); P@1 / P@10 / MRR in percent, macro over
the 41 T-REx relations. The Qin & Eisner cells come from OCR-damaged talk slides whose protocol is not stated (their
code ranks over the full vocabulary and pools facts); they are listed under "full" and marked as such in ``source``.
SuperGLUE: the P-tuning paper's rows, per task and metric in percent.
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


#: P-tuning Table 5, row "P-tuning" (albert-xxlarge-v2, 32 examples, selection on dev32, full SuperGLUE dev)
PUBLISHED_FEWSHOT: dict[str, dict[str, float]] = {
    "BoolQ": {"accuracy": 77.8},
    "CB": {"accuracy": 92.9, "f1_macro": 92.3},
    "WiC": {"accuracy": 56.3},
    "RTE": {"accuracy": 76.5},
    "MultiRC": {"em": 36.1, "f1a": 75.0},
    "WSC": {"accuracy": 84.6},
    "COPA": {"accuracy": 87.0},
}


#: P-tuning Tables 3 and 4, rows "P-tuning" (fully supervised, SuperGLUE dev), by model
PUBLISHED_FULL: dict[str, dict[str, dict[str, float]]] = {
    "bert-base-cased": {"BoolQ": {"accuracy": 73.9}, "CB": {"accuracy": 89.2, "f1_macro": 92.1},
                        "WiC": {"accuracy": 68.8}, "RTE": {"accuracy": 71.1}, "MultiRC": {"em": 14.8, "f1a": 63.3},
                        "WSC": {"accuracy": 63.5}, "COPA": {"accuracy": 72.0}},
    "gpt2": {"BoolQ": {"accuracy": 75.0}, "CB": {"accuracy": 91.1, "f1_macro": 93.2}, "WiC": {"accuracy": 68.3},
             "RTE": {"accuracy": 70.8}, "MultiRC": {"em": 23.5, "f1a": 69.8}, "WSC": {"accuracy": 63.5},
             "COPA": {"accuracy": 76.0}},
    "bert-large-cased": {"BoolQ": {"accuracy": 77.8}, "CB": {"accuracy": 96.4, "f1_macro": 97.4},
                         "WiC": {"accuracy": 72.7}, "RTE": {"accuracy": 75.5}, "MultiRC": {"em": 17.1, "f1a": 65.6},
                         "WSC": {"accuracy": 81.7}, "COPA": {"accuracy": 76.0}},
    "gpt2-medium": {"BoolQ": {"accuracy": 78.9}, "CB": {"accuracy": 98.2, "f1_macro": 98.7},
                    "WiC": {"accuracy": 69.4}, "RTE": {"accuracy": 75.5}, "MultiRC": {"em": 29.3, "f1a": 74.2},
                    "WSC": {"accuracy": 74.0}, "COPA": {"accuracy": 81.0}},
}


def published_superglue(method: str, frozen: bool, setting: str, model: str) -> dict[str, dict[str, float]] | None:
    """The P-tuning SuperGLUE numbers of the same setting: Table 5 (few-shot) or Table 3/4 by model (full)."""
    if method != "ptuning" or frozen:
        return None
    if setting == "fewshot":
        return PUBLISHED_FEWSHOT
    return PUBLISHED_FULL.get(model.rstrip("/").split("/")[-1])
