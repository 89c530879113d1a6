"""The adversarial suite runs against real router processes and scripted tier processes."""

from __future__ import annotations

import pytest

from tests.support.router_process import scripted_tiers


@pytest.fixture(scope="module")
def tier_ports():
    with scripted_tiers("edge", "cloud") as ports:
        yield ports
