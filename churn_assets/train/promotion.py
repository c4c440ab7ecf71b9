"""The promotion gate's rule, kept apart from MLflow so it can be read (and tested) on its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(new_auc: float, champion_auc: float | None, floor: float, margin: float) -> Decision:
    """Promote only a model above the floor that beats the champion by the margin on the same holdout."""
    if new_auc < floor:
        return Decision(False, f"ROC-AUC {new_auc:.4f} is below the floor {floor:.4f}")
    if champion_auc is None:
        return Decision(True, f"first model above the floor (ROC-AUC {new_auc:.4f} >= {floor:.4f})")
    if new_auc >= champion_auc + margin:
        return Decision(True, f"ROC-AUC {new_auc:.4f} beats the champion's {champion_auc:.4f} by at least {margin:.4f}")
    return Decision(
        False, f"ROC-AUC {new_auc:.4f} does not beat the champion's {champion_auc:.4f} by the margin {margin:.4f}"
    )
