"""Stage kinds. Each module here with a ``Config`` and a ``run`` is a stage kind.

The registry is built by walking this package, never kept by hand, so a new stage module
is picked up by the CLI, the config validator and the tests at once. Packages (``common/``:
code the stages share) are not kinds; neither are modules whose name starts with ``_``.
The contract a stage module fulfils is documented in :mod:`pipeline.stage`.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def kinds() -> list[str]:
    """Names of the stage kinds: the modules (not packages) of this package not starting with '_'."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg and not m.name.startswith("_"))


def get(kind: str) -> ModuleType:
    """The stage module for ``kind``.

    Raises:
        KeyError: for an unknown kind, listing the valid ones.
    """
    valid = kinds()
    if kind not in valid:
        raise KeyError(f"unknown stage kind {kind!r}; valid kinds: {', '.join(valid)}")
    module = importlib.import_module(f"stages.{kind}")
    if not hasattr(module, "Config") or not hasattr(module, "run"):
        raise KeyError(f"stages.{kind} defines no Config/run")
    return module
