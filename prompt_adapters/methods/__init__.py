"""Every prompt method of the library, in one list.

Each method is a folder (``config.py``, ``model.py``, an ``__init__.py`` that registers it with peft); ``METHODS``
lists them in one place, and the package's peft patches, the test matrix and the LAMA harness's method table read
it, so a new method is one folder plus one entry here.
"""

from prompt_adapters.methods import deep, mixture, promptgen, ptuning
from prompt_adapters.peft_registry import Method

METHODS: tuple[Method, ...] = (mixture.METHOD, deep.METHOD, ptuning.METHOD, promptgen.METHOD)

__all__ = ["METHODS", "Method"]
