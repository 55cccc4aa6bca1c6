"""What the default ``make demo`` run should show, and the check of a run against it.

``DOCUMENTED`` is the range measured over the seed runs reported in ``docs/results.md``
("Seeds"): each bound is the lowest and highest value of those runs. ``check`` compares a
run's summary with it; the demo prints the verdict and writes it to ``summary.json``
(``expected``), so a run that lands outside says so instead of telling a different story
quietly. The quick demo (the test suite's) has no documented range.
"""

from __future__ import annotations

from typing import Any

RESULTS = "docs/results.md"

DOCUMENTED: dict[str, Any] = {  # docs/results.md, "Seeds": lowest and highest of the seed runs
    "seeds": "0–4",
    "ranges": {
        "accuracy_after_sft": (0.66, 0.667),
        "accuracy_after_rl": (0.86, 0.987),
        "gain": (0.193, 0.32),
        "lowest_family_after_rl": (0.72, 0.98),
    },
}
_FLOAT_SLACK = 1e-9  # the gain is a float difference: 148/150 - 100/150 = 0.32000000000000006, not above 0.32

LABELS = {"accuracy_after_sft": "held-out accuracy after SFT", "accuracy_after_rl": "held-out accuracy after RL",
          "gain": "gain of RL over SFT", "lowest_family_after_rl": "lowest task family after RL"}


def observed(summary: dict) -> dict[str, float]:
    """The checked quantities of a run's summary."""
    return {"accuracy_after_sft": summary["accuracy_after_sft"], "accuracy_after_rl": summary["accuracy_after_rl"],
            "gain": summary["accuracy_after_rl"] - summary["accuracy_after_sft"],
            "lowest_family_after_rl": min(summary["per_set_after_rl"].values())}


def check(summary: dict, documented: dict | None = None) -> dict[str, Any]:
    """{"within": bool | None, "flags": [one line per quantity outside its range], "ranges"}.
    ``within`` is None when there is no documented range (the quick demo)."""
    doc = DOCUMENTED if documented is None else documented
    if summary.get("quick") or not doc.get("ranges"):
        return {"within": None, "flags": [], "ranges": {}}
    flags = []
    for key, value in observed(summary).items():
        lo, hi = doc["ranges"][key]
        if not lo - _FLOAT_SLACK <= value <= hi + _FLOAT_SLACK:
            where = "below" if value < lo else "above"
            flags.append(f"{LABELS[key]} {value:.1%} is {where} the documented range {lo:.1%}–{hi:.1%} "
                         f"(seeds {doc['seeds']}): see {RESULTS}")
    return {"within": not flags, "flags": flags, "ranges": doc["ranges"]}
