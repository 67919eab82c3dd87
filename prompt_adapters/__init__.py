"""prompt-adapters: soft prompts anywhere in a template, mixtures, deep perturbation, as PEFT adapters.

Importing this package registers every method with peft, so ``get_peft_model``, ``PeftModel.from_pretrained``
and ``AutoPeftModel*`` know them.
"""

from prompt_adapters.peft_registry import check_peft_version, install_peft_patches

check_peft_version()

from prompt_adapters.data.collator import PromptCollator  # noqa: E402
from prompt_adapters.methods import METHODS  # noqa: E402
from prompt_adapters.methods.deep import DeepPerturbConfig  # noqa: E402
from prompt_adapters.methods.mixture import MixturePromptConfig  # noqa: E402
from prompt_adapters.methods.promptgen import PromptGenCollator, PromptGenConfig  # noqa: E402
from prompt_adapters.methods.ptuning import PTuningEncoderConfig  # noqa: E402
from prompt_adapters.serving import prompt_embeds  # noqa: E402
from prompt_adapters.template import TemplateError, compile_template, parse_template  # noqa: E402

install_peft_patches(METHODS)

__all__ = [
    "METHODS",
    "DeepPerturbConfig",
    "MixturePromptConfig",
    "PTuningEncoderConfig",
    "PromptCollator",
    "PromptGenCollator",
    "PromptGenConfig",
    "TemplateError",
    "compile_template",
    "parse_template",
    "prompt_embeds",
]
__version__ = "0.1.0"
