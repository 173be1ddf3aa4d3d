"""How a release step's results reach results.json.

Each step (export, serving, calibration, explanations, robustness) computes its *section*,
a dict of the results.json keys it owns, without touching the shared results dict; `assign`
then puts the section in. Three kinds of key: a step's own key, which it replaces; a log that
several steps append to (`plot_errors`, `card_errors`), where a step adds its entries after
the others'; and `models`, one record per model to which several steps add their own fields
(the checkpoint size, the ONNX size).
"""

from __future__ import annotations

LOGS = ("plot_errors", "card_errors")
PER_MODEL = "models"


def assign(results: dict, section: dict) -> dict:
    """Put a step's section into results (in place) and return the section."""
    for key, value in section.items():
        if key in LOGS:
            results.setdefault(key, []).extend(value)
        elif key == PER_MODEL:
            for model, fields in value.items():
                results.setdefault(PER_MODEL, {}).setdefault(model, {}).update(fields)
        else:
            results[key] = value
    return section


def view(results: dict, section: dict) -> dict:
    """results as they will read once `section` is assigned, for the renderers a step calls
    before its end (model cards, the serving step), which read results and write only into
    the section's own records. A shallow copy: results itself is untouched."""
    own = {k: v for k, v in section.items() if k not in LOGS and k != PER_MODEL}
    return {**results, **own}
