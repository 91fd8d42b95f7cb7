"""The flat reward registry: name -> factory.

A factory is a `Reward` subclass (or any callable) whose keyword arguments are the reward's
parameters; `get(name, **params)` builds the reward function. Names are registered next to
their code with `@register("name")`, so the registry cannot drift from the modules, and a
duplicate name is refused. A dotted import path `pkg.mod:attr` also works, for experiments
that live outside this package.

>>> fn = get("format")
>>> fn.__name__
'format'
>>> get("no_such_reward")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
rewards.registry.UnknownRewardError: unknown reward 'no_such_reward'; valid names: accuracy, code, ...
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from rewards.base import Reward

R = TypeVar("R", bound="type[Reward]")

#: name -> factory. Filled by the `@register` decorators when `rewards` is imported.
REGISTRY: dict[str, Callable[..., Callable]] = {}


class UnknownRewardError(KeyError, ValueError):
    """Raised by `get` for a name that is neither registered nor a `module:attr` path."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0])


def register(name: str) -> Callable[[R], R]:
    """Class decorator adding a factory to `REGISTRY` under `name`.

    Raises:
        ValueError: if `name` is already registered (two rewards must never share a log name).
    """

    def decorator(factory: R) -> R:
        if name in REGISTRY:
            raise ValueError(f"reward name {name!r} is already registered by {REGISTRY[name]!r}")
        factory.name = name
        REGISTRY[name] = factory
        return factory

    return decorator


def _ensure_loaded() -> None:
    # The registry is filled by importing the family modules; `rewards/__init__` does that.
    importlib.import_module("rewards")


def get(name: str, **params: Any) -> Callable:
    """Build the reward function registered as `name` with `params`.

    `name` may also be a dotted path `package.module:attr`. If `attr` is a class it is
    instantiated with `params`; if it is a function and `params` are given, they are bound
    with `functools.partial` (TRL reads the name through the partial).

    Raises:
        UnknownRewardError (a KeyError and ValueError): unknown name; the message lists the
            valid names.
        TypeError: a parameter the reward does not take; the message lists the valid ones.
    """
    _ensure_loaded()
    if name in REGISTRY:
        factory = REGISTRY[name]
        check_params(name, factory, params)
        return factory(**params)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        obj = getattr(importlib.import_module(module_name), attr)
        if inspect.isclass(obj):
            return cast(Callable, obj(**params))  # a reward class: its instances are the reward functions
        return functools.partial(obj, **params) if params else obj
    raise UnknownRewardError(f"unknown reward {name!r}; valid names: {', '.join(sorted(REGISTRY))}")


def check_params(name: str, factory: Callable, params: dict[str, Any]) -> None:
    """Refuse a parameter `factory` (the registered reward `name`) does not take, without
    building the reward (configs check their reward params with it).

    Raises:
        TypeError: naming the unknown parameters and listing the valid ones.
    """
    accepted = _parameters(factory)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "(none)"
        raise TypeError(f"reward {name!r} takes no parameter {', '.join(unknown)}; valid parameters: {valid}")


def _parameters(factory: Callable) -> dict[str, inspect.Parameter]:
    signature = inspect.signature(factory)
    return {p.name: p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def log_name(name: str, params: dict[str, Any]) -> str:
    """The name TRL logs the reward `name` built with `params` under: the registered name,
    unless the factory derives one from its parameters (a static `log_name(params)`, e.g.
    `reward_model` with `label: helpfulness` -> `reward_model_helpfulness`). Builds nothing.

    >>> log_name("format", {}), log_name("reward_model", {"model": "m", "label": "safety"})
    ('format', 'reward_model_safety')
    """
    _ensure_loaded()
    namer = getattr(REGISTRY.get(name), "log_name", None)
    return namer(params) if callable(namer) else name


def model_references(name: str, params: dict[str, Any]) -> dict[str, str]:
    """Parameter -> model reference, for the parameters of reward `name` that name a model
    (the factory's `model_params`, e.g. `reward_model`'s `model`); {} for most rewards.
    Stages list them as inputs and resolve them (a step name becomes its `model/` folder)
    before building the reward.

    >>> model_references("reward_model", {"model": "helpfulness_rm"}), model_references("format", {})
    ({'model': 'helpfulness_rm'}, {})
    """
    _ensure_loaded()
    fields = getattr(REGISTRY.get(name), "model_params", ())
    return {p: params[p] for p in fields if isinstance(params.get(p), str) and params[p]}


def with_resolved_models(
    name: str, params: dict[str, Any], resolve: Callable[[str], str], resolve_dtype: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """`params` with each model reference (`model_references`) replaced by `resolve(ref)` and,
    with `resolve_dtype`, each dtype choice of the factory's `dtype_params` (its default when
    unset, e.g. `auto`) replaced by `resolve_dtype(choice)`. The rewards import nothing else of
    the project: a stage passes its resolvers (a step name -> its `model/` folder; `auto` -> the
    dtype this machine runs fast).

    >>> with_resolved_models("reward_model", {"model": "rm"}, str.upper, lambda d: "float32")
    {'model': 'RM', 'dtype': 'float32'}
    >>> with_resolved_models("format", {}, str.upper, lambda d: "float32")
    {}
    """
    out = {**params, **{p: resolve(ref) for p, ref in model_references(name, params).items()}}
    factory = REGISTRY.get(name)
    if resolve_dtype is not None and factory is not None:
        accepted = _parameters(factory)
        for p in getattr(factory, "dtype_params", ()):
            default = accepted[p].default if p in accepted else None
            choice = params.get(p, default)
            if isinstance(choice, str):
                out[p] = resolve_dtype(choice)
    return out


def available() -> list[tuple[str, str, str]]:
    """List every registered reward as `(name, parameters, semantics)`.

    `parameters` reads like a signature (`ngram=3, max_penalty=-1.0`); `semantics` is the
    first line of the factory's docstring.

    >>> ("format", "assume_think_open=False") in [(n, p) for n, p, _ in available()]
    True
    """
    _ensure_loaded()
    rows = []
    for name in sorted(REGISTRY):
        factory = REGISTRY[name]
        params = ", ".join(
            p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in _parameters(factory).values()
        )
        doc = inspect.getdoc(factory) or ""
        rows.append((name, params, doc.splitlines()[0] if doc else ""))
    return rows
