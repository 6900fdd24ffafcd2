"""A reservation held past its request: an async job's, made at its submit, settled by its run.

A job is admitted (and its audio reserved against its key's limits and budgets)
when it is submitted, so a key cannot queue jobs past its budget; the
reservation stays outstanding in the counters, and its record (what each
counter holds for it) is kept with the job. The job's run settles against that
record instead of reserving again; a job that ends without a run (cancelled
while it waited, expired, given up) releases it.

Counters live in fixed windows (:mod:`.counters`): a record settled in a later
window than it was reserved in corrects the later one (as a synchronous
request that spans a window's end does), and one whose counters were lost
meanwhile (in-memory counters across a restart, a Redis key past its window)
was already given back with them. Either way the job is charged at most once.
"""

from __future__ import annotations

from typing import Any

from ..config import VirtualKeyConfig
from ..errors import BudgetExceededError, ProxyError, RateLimitedError
from .governor import Admission, AudioReservation, Governor

#: How a record names what a spent counter is refused with.
_REFUSALS: dict[str, type[ProxyError]] = {
    "budget": BudgetExceededError,
    "rate_limit": RateLimitedError,
}


def held_record(admission: Admission) -> dict[str, Any]:
    """What ``admission`` holds in the counters, as JSON to keep with the job."""
    return {
        "by_audio": [
            {
                "name": r.name,
                "reserved": r.reserved,
                "maximum": r.maximum,
                "window": r.window,
                "rate": r.rate,
                "base_seconds": r.base_seconds,
                "refusal": "budget" if r.refusal is BudgetExceededError else "rate_limit",
                "message": r.message,
            }
            for r in admission.by_audio
        ]
    }


def resumed(key: VirtualKeyConfig | None, record: dict[str, Any]) -> Admission:
    """The admission ``record`` keeps, outstanding again, to be settled (or extended) by
    the job's run; ``key`` is its virtual key as it is now (for the served route's price)."""
    return Admission(
        key=key,
        by_audio=[
            AudioReservation(
                r["name"],
                float(r["reserved"]),
                float(r["maximum"]),
                float(r["window"]),
                rate=float(r["rate"]),
                refusal=_REFUSALS.get(r["refusal"], RateLimitedError),
                message=r["message"],
                base_seconds=float(r["base_seconds"]),
            )
            for r in record.get("by_audio", ())
        ],
    )


async def release(governor: Governor, record: dict[str, Any]) -> None:
    """Give back what ``record`` holds: its job ended without a run."""
    await governor.settle(resumed(None, record), 0.0)
