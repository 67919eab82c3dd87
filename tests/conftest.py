"""Shared pytest set-up: no Hub access, deterministic torch, and the data the tests read.

Data: ``fixture_data`` is ``tests/fixtures/data`` (excerpts of LAMA and FewGLUE, always present); ``full_data`` is the
complete data directory named by the environment variable ``PROMPT_ADAPTERS_DATA`` (holding ``lama/`` and
``superglue/``, e.g. as written by ``python benchmarks/lama.py --download`` and ``download_fewglue``); tests that use
it are skipped when the variable is unset.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pathlib
from collections.abc import Iterator

import pytest
import torch

FIXTURE_DATA = pathlib.Path(__file__).resolve().parent / "fixtures" / "data"
DATA_ENV = "PROMPT_ADAPTERS_DATA"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run faster on one intra-op thread than on two, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fixture_data() -> pathlib.Path:
    """The excerpts in tests/fixtures/data (layout of a full data directory, a few records per file)."""
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def full_data() -> pathlib.Path:
    """The complete LAMA / SuperGLUE data named by PROMPT_ADAPTERS_DATA; the test is skipped when it is unset."""
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(f"needs the full LAMA / FewGLUE data: set {DATA_ENV} to a folder holding lama/ and superglue/")
    path = pathlib.Path(value).expanduser()
    if not (path / "lama").is_dir() or not (path / "superglue").is_dir():
        pytest.fail(f"{DATA_ENV}={value} must hold lama/ and superglue/ folders (README, 'Data')")
    return path


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny BART saved as a folder: the PromptGen tests' generator (one per test module, as each may change it)."""
    from prompt_adapters.testing import save_tiny_model

    return save_tiny_model("bart", tmp_path_factory.mktemp("generator") / "bart")
