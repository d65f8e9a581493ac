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
import contextlib
from collections.abc import AsyncIterator
from functools import partial

from .service import Billing, Caller, Reservation

__all__ = ["charge"]


@contextlib.asynccontextmanager
async def charge(billing: Billing, caller: Caller, amount: int) -> AsyncIterator[Reservation]:
    """Hold `amount` micro-USD of the caller's room (402 when it cannot) for the block."""
    if billing.shared is None:
        reservation = await billing.reserve(caller, amount)  # in memory: it never suspends
    else:
        task = asyncio.ensure_future(billing.reserve(caller, amount))
        try:
            reservation = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(partial(_release_late, billing))
            raise
    try:
        yield reservation
    finally:
        billing.release(reservation)


def _release_late(billing: Billing, task: asyncio.Future[Reservation]) -> None:
    if not task.cancelled() and task.exception() is None:
        billing.release(task.result())
