"""The router's side of learning from live traffic (the policy's ``learning:`` section).

Three jobs, all off the answer's path except recording:

- **Recording**: with ``learning.record``, a request's ledger row carries what the router saw
  (the query, every tier's answer and its score; see :mod:`tierlm.router.learn.traffic`). The
  answer the cascade did not need to score (the last stage's) is scored here, so every tier
  has a score to be calibrated on.
- **Exploration**: a cascade calls later tiers only for the queries it escalates, so its logs
  say little about what the tiers it skipped would have answered, and a policy refitted on them
  learns its own bias. ``learning.explore.share`` of requests are therefore also sent, after
  their answer went back, to every tier of the cascade that was not called. Its spend is booked
  to the ``__explore__`` tenant under ``learning.explore.budget_per_day``, reserved in the store
  before any call like any tenant's budget, so replicas together never spend more than the cap.
- **Feedback and live calibration**: a caller's verdict is stored with the request; the router
  that receives it labels every answer the request saw and updates its per-tier calibration
  windows (Prometheus gauges), and raises the policy's alarm when they say the scorer drifted.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable

from tierlm.config import Policy
from tierlm.router.judges import JUDGES
from tierlm.router.learn.live_calibration import LiveCalibration
from tierlm.router.learn.traffic import details_json, label
from tierlm.router.serve import telemetry
from tierlm.router.serve.cascade import CascadeRunner, RoutedRequest, worst_case_cost
from tierlm.router.store import BudgetExceeded, Labelled, LedgerRow, Store, StoreUnavailable, Verdict

log = logging.getLogger(__name__)

#: The ledger's tenant for exploration calls (they serve no caller; the operator pays).
EXPLORE_TENANT = "__explore__"
#: How far back a router reads labelled requests when a policy goes live, to fill its windows.
SEED_HORIZON_S = 7 * 86_400.0
#: Calibration window when the policy sets no alarm (the alarm's window otherwise).
DEFAULT_WINDOW = 200


class TrafficLearning:
    """Recording, exploration and live calibration for one policy (rebuilt when it reloads)."""

    def __init__(
        self, policy: Policy, version: str, store: Store, runner: CascadeRunner, router_id: str,
        draw: Callable[[], float] = random.random,
    ):
        self.policy = policy
        self.config = policy.learning
        self.version = version
        self.store = store
        self.runner = runner
        self.router_id = router_id
        self._draw = draw
        self._judge = JUDGES.build(self.config.feedback_judge)
        alarm = self.config.alarm
        self.calibration = LiveCalibration(alarm.window if alarm is not None else DEFAULT_WINDOW)
        self._firing: set[str] = set()

    # -- recording and exploration ----------------------------------------------------------

    def explores(self) -> bool:
        """Whether this request is one of the explored share (drawn before it is routed)."""
        return self.config.record and self.config.explore.share > 0 and self._draw() < self.config.explore.share

    async def details(self, routed: RoutedRequest, explore: bool) -> str | None:
        """What the request's ledger row keeps for learning, or None when the policy does not record."""
        if not self.config.record:
            return None
        answers = [await self.runner.score(routed, tier) for tier in routed.seen]
        return details_json(routed.query.text, routed.trace.accepted_tier, answers, self.version, explore)

    async def explore(self, routed: RoutedRequest) -> None:
        """Send an answered request to every tier of the cascade the cascade did not call, within
        the exploration cap; the answers are added to its record, the spend to the ledger."""
        skipped = [self.policy.tier(name) for name in self.policy.cascade.order if name not in routed.seen]
        if not skipped:
            return
        request_id = routed.request.request_id
        worst = sum(worst_case_cost(tier, self.runner.request_for(routed, tier.name)) for tier in skipped)
        lease_s = sum(tier.timeout_s for tier in skipped) + self.policy.limits.lease_margin_s
        explore_id = f"{request_id}:explore"
        try:
            reservation = await self.store.reserve(explore_id, EXPLORE_TENANT, worst, self.config.explore.budget_per_day, lease_s)
        except BudgetExceeded:
            telemetry.EXPLORATIONS.labels("capped").inc()
            return
        except StoreUnavailable:
            telemetry.EXPLORATIONS.labels("store-unavailable").inc()
            return
        started = time.perf_counter()
        found = await self.runner.explore(routed, skipped)
        row = LedgerRow(
            request_id=explore_id, tenant=EXPLORE_TENANT, tiers=found.tiers, accepted_tier="",
            prompt_tokens=found.prompt_tokens, completion_tokens=found.completion_tokens, cost=found.cost,
            latency_ms=(time.perf_counter() - started) * 1e3, outcome="OK", router=self.router_id,
        )
        await self.store.finish(row, reservation)
        if found.answers:
            await self.store.record_explored(request_id, [answer.to_json() for answer in found.answers])
        telemetry.EXPLORATIONS.labels("done" if found.answers else "failed").inc()
        telemetry.EXPLORATION_COST.inc(found.cost)

    # -- feedback and live calibration ------------------------------------------------------

    async def feedback(self, request_id: str, tenant: str, verdict: Verdict) -> bool:
        """Store ``tenant``'s verdict on its request (False: it already had one) and, when the
        request was recorded under this policy, learn its labels. Raises the store's errors."""
        stored = await self.store.give_feedback(request_id, tenant, verdict)
        telemetry.FEEDBACK.labels("stored" if stored else "repeated").inc()
        if stored:
            for labelled in await self.store.labelled(request_id=request_id):
                self._observe(labelled)
            await self._publish()
        return stored

    async def seed(self) -> None:
        """Fill the calibration windows from what the store already knows of this policy."""
        try:
            labelled = await self.store.labelled(time.time() - SEED_HORIZON_S)
        except StoreUnavailable as exc:
            log.warning("live calibration starts empty: %s", exc)
            return
        for item in labelled:
            self._observe(item)
        await self._publish()

    def _observe(self, labelled: Labelled) -> None:
        if json.loads(labelled.details).get("policy") != self.version:
            return  # routed by another policy: its scores say nothing of this one's calibration
        self.calibration.observe(label(labelled, self._judge))

    async def _publish(self) -> None:
        for tier in self.calibration.tiers():
            metrics = self.calibration.tier(tier)
            telemetry.LIVE_LABELS.labels(tier).set(metrics.labels)
            for gauge, value in (
                (telemetry.LIVE_ACCURACY, metrics.accuracy), (telemetry.LIVE_BRIER, metrics.brier),
                (telemetry.LIVE_ECE, metrics.ece), (telemetry.LIVE_ACCEPT_RATE, metrics.accept_rate),
                (telemetry.LIVE_ESCALATION_RATE, metrics.escalation_rate),
            ):
                gauge.labels(tier).set(float("nan") if value is None else value)
        served = self.calibration.served_accuracy()
        telemetry.LIVE_SERVED_ACCURACY.set(float("nan") if served is None else served)
        alarm = self.config.alarm
        if alarm is None:
            return
        firing = self.calibration.alarms(alarm)
        for tier in self.calibration.tiers():
            telemetry.CALIBRATION_ALARM.labels(tier).set(1 if tier in firing else 0)
        for tier in firing.keys() - self._firing:
            log.warning("calibration alarm: tier %s %s %.3f > %.3f over its last %d labels (policy %s); "
                        "consider `tierlm router refit`", tier, alarm.metric, firing[tier], alarm.above, alarm.window, self.version)
            numbers = {"tier": tier, alarm.metric: firing[tier], "above": alarm.above, "router": self.router_id}
            try:
                await self.store.log_decision("alarm", self.version, json.dumps(numbers))
            except StoreUnavailable as exc:
                log.warning("the alarm was not logged in the store: %s", exc)
        self._firing = set(firing)
