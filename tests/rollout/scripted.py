"""The scripted agent of the rollout tests lives in the library, ``arpo_jax.apps.scripted_agent``
(so that ``arpo-jax bench rollout`` runs without the repository on the path). This module is an
alias of it (``sys.modules``), not a copy: ``import tests.rollout.scripted as scripted`` gives
that module, so ``monkeypatch.setattr(scripted, "TRANSITIONS", ...)`` patches what
``build_model`` reads."""

import sys

from arpo_jax.apps import scripted_agent

sys.modules[__name__] = scripted_agent
