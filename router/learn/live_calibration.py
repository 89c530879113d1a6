"""How well the live policy's scores match what callers say: rolling metrics per tier on
feedback-labelled requests, and the alarm that says the scorer has drifted.

Each tier keeps its last ``window`` labelled answers (score, right or wrong) and, for the
requests where the cascade called it, whether it accepted or escalated. A scorer fitted on last
month's traffic is usually still good at *ranking* answers when traffic shifts, but its
probabilities stop meaning what they say, so the thresholds fitted on them pick the wrong
answers: calibration error (ECE) and Brier score over recent labels are what move first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from tierlm.config import AlarmConfig
from tierlm.router.learn.quality import brier, ece
from tierlm.router.learn.traffic import LabelledRequest


@dataclass(frozen=True)
class TierCalibration:
    """One tier's live metrics over its window (None where nothing is known yet)."""

    labels: int  # labelled answers in the window
    accuracy: float | None
    brier: float | None  # over the labelled answers that were scored
    ece: float | None
    accept_rate: float | None  # of the labelled requests where the cascade called the tier
    escalation_rate: float | None


class LiveCalibration:
    """Rolling per-tier metrics of one policy; fed one labelled request at a time."""

    def __init__(self, window: int = 200):
        self.window = window
        self._answers: dict[str, deque[tuple[float | None, bool]]] = {}
        self._accepted: dict[str, deque[bool]] = {}
        self._served: deque[bool] = deque(maxlen=window)

    def observe(self, request: LabelledRequest) -> None:
        for tier, answer in request.answers.items():
            right = request.correct[tier]
            if right is None:
                continue
            self._answers.setdefault(tier, deque(maxlen=self.window)).append((answer.score, right))
            if not answer.explored:  # the cascade called it: it either answered or escalated
                self._accepted.setdefault(tier, deque(maxlen=self.window)).append(tier == request.accepted_tier)
        served = request.correct.get(request.accepted_tier)
        if served is not None:
            self._served.append(served)

    def served_accuracy(self) -> float | None:
        """Share of the answers callers got that were right."""
        return float(np.mean(self._served)) if self._served else None

    def tiers(self) -> list[str]:
        return sorted(self._answers)

    def tier(self, name: str) -> TierCalibration:
        answers = self._answers.get(name, ())
        scored = [(score, right) for score, right in answers if score is not None]
        accepted = self._accepted.get(name, ())
        accept_rate = float(np.mean(accepted)) if accepted else None
        return TierCalibration(
            labels=len(answers),
            accuracy=float(np.mean([right for _, right in answers])) if answers else None,
            brier=brier(*_arrays(scored)) if scored else None,
            ece=ece(*_arrays(scored)) if scored else None,
            accept_rate=accept_rate,
            escalation_rate=None if accept_rate is None else 1.0 - accept_rate,
        )

    def alarms(self, alarm: AlarmConfig) -> dict[str, float]:
        """The tiers whose metric is above the alarm's bound over the last ``alarm.window`` scored
        labels (once ``alarm.min_labels`` are in), with the value."""
        firing = {}
        for name, answers in self._answers.items():
            scored = [(score, right) for score, right in list(answers)[-alarm.window:] if score is not None]
            if len(scored) < alarm.min_labels:
                continue
            value = (ece if alarm.metric == "ece" else brier)(*_arrays(scored))
            if value > alarm.above:
                firing[name] = value
        return firing


def _arrays(scored: list[tuple[float, bool]]) -> tuple[np.ndarray, np.ndarray]:
    scores, rights = zip(*scored)
    return np.array(rights, dtype=bool), np.clip(np.array(scores, dtype=np.float64), 0.0, 1.0)
