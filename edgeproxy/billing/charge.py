"""The one money step every request goes through: reserve → settle | release (SPEC §5.3).

    async with charge(billing, caller, max_cost) as reservation:
        ...                       # attempts; a served (or cancelled-after-answer) generation
                                  # settles `reservation` with its real charge (Gateway.record)
    # leaving the block releases whatever was not settled, however it is left: an error, a
    # client that went away (CancelledError), a deadline.

Release is synchronous and idempotent, so nothing between the reservation and its release can
be interrupted by a cancellation. The reservation itself may wait on Redis; it runs shielded, and
one granted after its request was cancelled is released as soon as it lands: a reservation
cannot leak.
"""

from __future__ import annotations

import asyncio
from functools import partial

from .service import Billing, Caller, Reservation

__all__ = ["charge"]


class charge:  # lower case: it reads as a step, `async with charge(...)`
    """Hold `amount` micro-USD of the caller's room (402 when it cannot) for the block. A class,
    not a generator-based context manager: it is on every request's path."""

    __slots__ = ("_amount", "_billing", "_caller", "_reservation")

    def __init__(self, billing: Billing, caller: Caller, amount: int) -> None:
        self._billing = billing
        self._caller = caller
        self._amount = amount
        self._reservation: Reservation | None = None

    async def __aenter__(self) -> Reservation:
        billing = self._billing
        if billing.shared is None:
            # In memory the reservation never suspends: nothing to shield.
            r = await billing.reserve(self._caller, self._amount)
        else:
            task = asyncio.ensure_future(billing.reserve(self._caller, self._amount))
            try:
                r = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(partial(_release_late, billing))
                raise
        self._reservation = r
        return r

    async def __aexit__(self, *exc: object) -> None:
        assert self._reservation is not None
        self._billing.release(self._reservation)


def _release_late(billing: Billing, task: asyncio.Future[Reservation]) -> None:
    if not task.cancelled() and task.exception() is None:
        billing.release(task.result())
