"""Reward registry and per-example selection.

``reward_for(example, text, config)`` picks the reward in this order: ``config.name`` (forced),
``config.by_source[example.data_source]``, then ``config.math_reward`` for math examples
(``ability == "math"``, or a math benchmark as ``data_source``) and ``config.qa_reward`` for the
rest. Examples are duck-typed: anything with ``data_source``, ``ability`` and ``answers``.
"""

from __future__ import annotations

from typing import Protocol

from .arpo_f1 import arpo_f1_reward
from .types import RewardConfig, RewardFn, RewardResult
from .verifiable import format_reward, math_reward, qa_em_reward, qa_f1_reward

MATH_SOURCES = frozenset({"aime24", "aime25", "math500", "gsm8k", "math", "amc23"})

_REGISTRY: dict[str, RewardFn] = {
    "arpo_f1": arpo_f1_reward,
    "math": math_reward,
    "qa_em": qa_em_reward,
    "qa_f1": qa_f1_reward,
    "format": format_reward,
}


class ExampleLike(Protocol):
    """What a reward needs from an example (``arpo_jax.data.Example`` fits)."""

    data_source: str
    ability: str
    answers: list[str]


def reward_names() -> list[str]:
    """Registered reward names."""
    return sorted(_REGISTRY)


def get_reward_fn(name: str) -> RewardFn:
    """The reward function registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; known: {', '.join(reward_names())}") from None


def register_reward(name: str, fn: RewardFn, *, overwrite: bool = False) -> None:
    """Adds a reward ``fn(text, answers, config) -> RewardResult`` under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"reward {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[name] = fn


def is_math(example: ExampleLike) -> bool:
    """Math examples: ``ability == "math"``, or no ability and a math benchmark source."""
    if example.ability:
        return example.ability == "math"
    return example.data_source in MATH_SOURCES


def select_reward_name(example: ExampleLike, config: RewardConfig) -> str:
    """The reward name ``reward_for`` would use for this example."""
    if config.name:
        return config.name
    if example.data_source in config.by_source:
        return config.by_source[example.data_source]
    return config.math_reward if is_math(example) else config.qa_reward


def reward_for(example: ExampleLike, text: str, config: RewardConfig | None = None) -> RewardResult:
    """Scores trajectory ``text`` (everything after the prompt) against ``example.answers``."""
    config = config or RewardConfig()
    name = select_reward_name(example, config)
    return get_reward_fn(name)(text, list(example.answers), config)
