"""The rollout tests' shared set-up: the scripted agent and a real sandboxed tool dispatcher."""

import pytest

from arpo_jax.tools import PythonToolConfig, ToolDispatcher
from tests.rollout.scripted import build_model, build_tokenizer


@pytest.fixture(scope="module")
def setup():
    """(tokenizer, model, dispatcher) of the scripted agent, once per test module."""
    tok = build_tokenizer()
    model, _ = build_model(tok)
    disp = ToolDispatcher.from_configs(python=PythonToolConfig(timeout_s=20))
    yield tok, model, disp
    disp.close()
