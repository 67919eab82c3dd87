"""benchmarks/speed.py on tiny configs: the report has every row and its ratios (timings are never asserted)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402

from prompt_adapters import compile_template  # noqa: E402
from prompt_adapters.testing import build_tokenizer  # noqa: E402

RATIO = re.compile(r"^\d+\.\d\d×$")
TRAIN_ROWS = [
    speed.FLOOR, speed.PEFT_PT, speed.PEFT_PTUNING, speed.SINGLE,
    *[speed.mixture_name(k) for k in speed.MIXTURE_SIZES], speed.DEEP, speed.PTUNING,
]


def _table(section: str, heading: str) -> dict[str, list[str]]:
    """Rows of the markdown table under ``heading`` in ``section``, keyed by their first cell."""
    lines = section.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in lines[start + 2 : end]]
    return {row[0]: row[1:] for row in cells}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("speed") / "speed.md"
    text = speed.main(["--model-size", "small", "--repeats", "1", "--batch", "4", "--eval-batch", "4", "--threads", "1",
                       "--out", str(out)])
    assert out.read_text(encoding="utf-8") == text
    return text


def test_header_names_the_command_and_the_machine(report: str) -> None:
    assert "Command: `python benchmarks/speed.py --model-size small --repeats 1" in report
    assert f"torch {torch.__version__}" in report and "intra-op thread" in report and "logical cores" in report


@pytest.mark.parametrize("family", ["BERT", "GPT-2"])
def test_every_variant_has_its_times_and_ratios(report: str, family: str) -> None:
    section = next(s for s in report.split("\n## ") if s.startswith(family))
    gap = float(re.search(r"largest difference ([0-9.e+-]+)\)", section).group(1))
    assert gap < 1e-4, "the floor must compute the same loss and scores as the single soft prompt"

    train = _table(section, "### Train step")
    assert list(train) == [*TRAIN_ROWS, speed.PROMPTGEN]
    measured = TRAIN_ROWS if family == "GPT-2" else [*TRAIN_ROWS, speed.PROMPTGEN]
    if family == "GPT-2":
        assert train[speed.PROMPTGEN][0] == "masked LMs only"
    for name in measured:
        step, _spread, collate, peak, versus_peft, versus_floor, versus_single, peak_ratio = train[name]
        assert float(step.replace(",", "")) > 0 and float(peak.replace(",", "")) >= 0
        assert RATIO.match(versus_peft) and RATIO.match(versus_floor) and RATIO.match(peak_ratio)
        ours = name.startswith("ours")
        assert bool(RATIO.match(versus_single)) == ours and (collate != "–") == ours
    assert train[speed.FLOOR][5] == train[speed.PEFT_PT][4] == train[speed.SINGLE][6] == "1.00×"

    scoring = _table(section, "### Scoring")
    assert list(scoring) == [speed.FLOOR, speed.SINGLE]
    for _batch, _spread, _collate, facts, _peak, throughput in scoring.values():
        assert float(facts.replace(",", "")) > 0 and RATIO.match(throughput)


def test_every_target_has_a_verdict(report: str) -> None:
    targets = report.split('## Targets (issue "Speed and memory")', 1)[1]
    rows = [line for line in targets.splitlines() if line.startswith("| ") and line.endswith(("PASS |", "FAIL |"))]
    memory_rows = len(TRAIN_ROWS) - 3  # every method of ours against the floor
    assert len(rows) == len(speed.FAMILIES) * (2 + len(speed.MIXTURE_SIZES) + 2 + memory_rows)
    assert all(RATIO.match(row.split("|")[3].strip()) for row in rows)


@pytest.mark.parametrize("family", speed.FAMILIES)
def test_mixture_templates_have_equal_lengths(family: str) -> None:
    """Mixture K must run exactly K times the rows and tokens of the single prompt for its ratio to mean anything."""
    tokenizer = build_tokenizer(family)
    kind = "masked" if family == "bert" else "causal"
    soft = {compile_template(speed.template(t, kind), tokenizer).num_soft for t in speed.TEMPLATES}
    assert soft == {compile_template(speed.PTUNING_TEMPLATES[kind], tokenizer, words="hard").num_soft}


def test_peak_tensor_memory_counts_new_storages_only() -> None:
    weight = torch.randn(256, 256, requires_grad=True)  # 256 KiB, exists before: not counted
    with speed.PeakTensorMemory() as tracker:
        view = weight.t()
        hidden = torch.randn(256, 256)
        (hidden @ view).relu().sum().backward()
    assert tracker.peak >= 3 * weight.nbytes  # the input, the product and the weight's gradient are live together
    assert tracker.live == weight.grad.nbytes + hidden.nbytes
    with speed.PeakTensorMemory() as views_only:
        weight.detach().t().mul_(1.0)
    assert views_only.peak == 0


def test_model_folder_is_measured_instead_of_the_configs(tmp_path: Path) -> None:
    """--model DIR: one section for the pretrained folder's causal LM, every train and scoring variant measured."""
    from prompt_adapters.testing import save_tiny_model

    folder = save_tiny_model("gpt2", tmp_path / "tiny-gpt2")
    text = speed.main(["--model", str(folder), "--repeats", "1", "--batch", "2", "--eval-batch", "2", "--threads",
                       "1", "--out", str(tmp_path / "speed.md")])
    sections = [s for s in text.split("\n## ") if not s.startswith(("# ", "Targets"))]
    assert [s.split("\n", 1)[0].split(" (")[0] for s in sections] == ["tiny-gpt2 causal LM"]
    assert "pretrained" in sections[0].split("\n", 1)[0]
    train = _table(sections[0], "### Train step")
    assert list(train) == [*TRAIN_ROWS, speed.PROMPTGEN] and train[speed.PROMPTGEN][0] == "masked LMs only"
    assert all(RATIO.match(row[4]) for name, row in train.items() if name != speed.PROMPTGEN)
    gap = float(re.search(r"largest difference ([0-9.e+-]+)\)", sections[0]).group(1))
    assert gap < 1e-4
