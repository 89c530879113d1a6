"""The cascade's acceptance rule, one implementation for the live router and the offline tools.

A stage's answer is kept when its score reaches the stage's threshold (a threshold equal to a
score accepts it); the last stage always answers. :class:`~tierlm.router.serve.cascade.CascadeRunner`
applies it to one answer, :mod:`tierlm.router.learn.cascade_eval` to arrays of scores, so an
optimizer's thresholds mean on the router what they meant when they were fitted.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

Score = TypeVar("Score", float, np.ndarray)


def accepts(score: Score, threshold: float | np.ndarray) -> Score:
    """Whether (elementwise, for arrays) a stage keeps an answer with ``score``."""
    return score >= threshold
