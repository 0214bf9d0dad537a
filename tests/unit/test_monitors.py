"""The monitor registry: each moment's factories, in order, and a monitor's hooks defaulting to
nothing (the run loop calls every hook on every monitor)."""

from __future__ import annotations

import pytest

from infbench.measure import monitors

pytestmark = pytest.mark.unit


def test_the_shipped_monitors_are_registered_at_their_moment() -> None:
    assert [f.__name__ for f in monitors.FACTORIES["launch"]] == ["processes", "energy_counters",
                                                               "gpus"]
    assert [f.__name__ for f in monitors.FACTORIES["healthy"]] == ["redis", "metrics", "cgroup",
                                                                 "outside", "capture"]


def test_a_registered_factory_is_started_with_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitors, "FACTORIES", {"launch": [], "healthy": []})
    made: list[str] = []

    class Counting(monitors.Monitor):
        def rest(self, cycle: int) -> None:
            made.append(f"rest {cycle}")

    @monitors.register("healthy")
    def counting(ctx: monitors.Context) -> list[monitors.Monitor]:
        made.append("made")
        return [Counting(), monitors.Monitor()]

    started = monitors.start("healthy", None)  # type: ignore[arg-type]
    assert monitors.start("launch", None) == []  # type: ignore[arg-type]
    for m in started:
        m.rest(2)
        assert m.trim() == []
        m.stop()
    assert made == ["made", "rest 2"]
