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
    "seeds": "0–3",
    "ranges": {
        "accuracy_after_sft": (0.333, 0.667),
        "accuracy_after_rl": (0.333, 1.0),
        "gain": (0.0, 0.334),
        "lowest_family_after_rl": (0.0, 1.0),
    },
}

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
        if not lo <= value <= hi:
            where = "below" if value < lo else "above"
            flags.append(f"{LABELS[key]} {value:.1%} is {where} the documented range {lo:.1%}–{hi:.1%} "
                         f"(seeds {doc['seeds']}): see {RESULTS}")
    return {"within": not flags, "flags": flags, "ranges": doc["ranges"]}
