"""Guest time for the platform devices: a clock with `now_ns()`.

Timers (the PIT, the ACPI PM timer) count guest time, not host time: the VMM derives it from the
guest's TSC, so a guest paused in a debugger or slowed down by emulation sees its timers keep pace
with its own clock. Devices only ever read the clock; whoever runs the vCPU advances it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NS_PER_S", "Clock", "ManualClock", "ns_of_tick", "ticks_at"]

NS_PER_S = 1_000_000_000


class Clock(Protocol):
    def now_ns(self) -> int:
        """Guest time in nanoseconds; never goes backwards."""
        ...


class ManualClock:
    """A clock that moves only when told to (tests, and a VMM that steps time itself)."""

    def __init__(self, start_ns: int = 0):
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, ns: int) -> int:
        if ns < 0:
            raise ValueError("guest time never goes backwards")
        self._now += ns
        return self._now

    def set(self, now_ns: int) -> None:
        if now_ns < self._now:
            raise ValueError("guest time never goes backwards")
        self._now = now_ns


def ticks_at(now_ns: int, hz: int) -> int:
    """Whole ticks of an `hz` oscillator that started at guest time 0."""
    return now_ns * hz // NS_PER_S


def ns_of_tick(tick: int, hz: int) -> int:
    """The first nanosecond at which `ticks_at` reaches `tick` (the inverse, rounded up)."""
    return -(-tick * NS_PER_S // hz)
