"""How many tokens to draft next round, from the acceptance rate and what rounds cost.

With a per-token acceptance rate a, a round of k drafts yields (1 - a^(k+1)) / (1 - a) tokens
on average (Leviathan et al. 2023, eq. 1) and takes k draft steps plus one verify call (the
round trip and the verifier's pass). The drafter picks the k that maximises tokens per second
under its running estimates of all three, so a slow link or a poor draft shortens rounds and a
good draft on a fast link lengthens them.

A verify call is not flat in k everywhere: on a GPU the verifier's pass over k + 1 positions
costs about what one position does, but on a CPU it is compute-bound and grows with every
position (docs/speculative.md). So the verify cost is modelled as a line in k, fitted over
recent rounds by least squares with the same forgetting as the other estimates; until rounds
of two different k have been seen, the line is flat (the slope cannot be told from the
intercept).
"""

from __future__ import annotations

#: Weight of the newest observation in the running estimates.
SMOOTHING = 0.3


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens a round of ``k`` drafts commits on average at per-token acceptance ``acceptance``."""
    if acceptance >= 1.0:
        return k + 1.0
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


class DraftLength:
    """The drafter's running choice of k, within 1..``max_k``, starting at ``k``; held at ``k``
    when not ``adaptive`` (benchmarks measure acceptance by k that way)."""

    def __init__(self, k: int, max_k: int, prior_acceptance: float = 0.7, *, adaptive: bool = True) -> None:
        if not 1 <= k <= max_k:
            raise ValueError(f"need 1 <= k <= max_k, got k={k}, max_k={max_k}")
        self.k = k
        self.max_k = max_k
        self.adaptive = adaptive
        self.acceptance = prior_acceptance
        self._step_s: float | None = None  # one draft step
        self._verify = _VerifyCost()  # one verify call, round trip included, against k

    def observe(self, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        """Account for one round and choose the next k."""
        # Per-token acceptance under the geometric model: accepted tokens over accepted tokens
        # plus the one rejection, if the round had one.
        rejected = 1 if accepted < drafted else 0
        rate = accepted / (accepted + rejected) if accepted + rejected else self.acceptance
        self.acceptance = (1 - SMOOTHING) * self.acceptance + SMOOTHING * rate
        self._step_s = _smooth(self._step_s, draft_s / drafted)
        self._verify.observe(drafted, verify_s)
        if not self.adaptive:
            return
        self.k = max(
            range(1, self.max_k + 1),
            key=lambda k: expected_tokens(self.acceptance, k) / (k * self._step_s + self._verify.seconds(k)),
        )


def _smooth(current: float | None, new: float) -> float:
    return new if current is None else (1 - SMOOTHING) * current + SMOOTHING * new


class _VerifyCost:
    """Seconds per verify call as ``intercept + slope * k``: exponentially weighted least squares
    over the rounds seen, each older round's weight shrunk by ``1 - SMOOTHING``."""

    def __init__(self) -> None:
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, k: int, seconds: float) -> None:
        keep = 1 - SMOOTHING
        self._w = keep * self._w + 1.0
        self._x = keep * self._x + k
        self._y = keep * self._y + seconds
        self._xx = keep * self._xx + k * k
        self._xy = keep * self._xy + k * seconds

    def seconds(self, k: int) -> float:
        mean_x, mean_y = self._x / self._w, self._y / self._w
        spread = self._xx / self._w - mean_x**2
        # Rounds of (nearly) one k say nothing about the slope; a negative one is noise.
        slope = max(0.0, (self._xy / self._w - mean_x * mean_y) / spread) if spread > 1e-6 else 0.0
        return max(0.0, mean_y + slope * (k - mean_x))
