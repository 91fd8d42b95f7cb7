"""Rule-based rewards for R1-style reasoning RL, rejection sampling and evaluation.

Every reward has TRL's signature ``fn(prompts, completions, **columns) -> list[float | None]``
(None = cannot be judged) and is built by name from the flat registry::

    from rewards import get
    accuracy = get("accuracy")            # math / code / reasoning-gym dispatcher
    steps = get("reasoning_steps", min_steps=3)

`available()` lists names, parameters and semantics; ``r1 rewards list`` prints them.
Families live in small modules: `format`, `math`, `code`, `rgym`, `accuracy`, `language`,
`length`, `repetition`, `refusal`, `reward_model` (a trained sequence classifier's score);
each registers its rewards next to their code (``@register``), so this list of families is
the only one to keep (``docs/architecture.md``: add a reward).
"""

# Importing the families fills the registry.
from rewards import (  # noqa: F401
    accuracy,
    code,
    format,
    language,
    length,
    math,
    refusal,
    repetition,
    reward_model,
    rgym,
)
from rewards.registry import REGISTRY, available, get, register

__all__ = ["REGISTRY", "available", "get", "register"]
