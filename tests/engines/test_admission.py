"""A pool's admission queue: bounded, first come first served, and no slot is lost to a cancelled waiter."""

import asyncio

import pytest

from serving.pools import PoolQueueFull, PoolRuntime, PoolSettings


def pool(in_flight: int = 1, queue: int = 2) -> PoolRuntime:
    return PoolRuntime(PoolSettings("p", "interactive", in_flight, queue, 2.0), replicas=1)


def test_past_the_queue_limit_admission_fails_at_once_with_a_retry_after():
    p = pool(in_flight=1, queue=1)

    async def run():
        await p.admit_request()  # running
        waiter = asyncio.ensure_future(p.admit_request())  # queued
        await asyncio.sleep(0)
        with pytest.raises(PoolQueueFull) as refused:
            await p.admit_request()
        p.release()
        waited = await waiter
        p.release()
        return refused.value, waited

    refused, waited = asyncio.run(run())
    assert refused.retry_after_s >= 1
    assert waited > 0
    assert p.in_flight == 0 and p.waiting == 0


def test_a_cancelled_waiter_does_not_keep_a_slot():
    p = pool(in_flight=1, queue=4)

    async def run():
        await p.admit_request()
        waiter = asyncio.ensure_future(p.admit_request())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        p.release()
        await asyncio.sleep(0)
        assert await asyncio.wait_for(p.admit_request(), 1) == 0.0  # the slot is free again
        p.release()

    asyncio.run(run())
    assert p.in_flight == 0 and p.waiting == 0


def test_waiters_are_admitted_in_arrival_order():
    p = pool(in_flight=1, queue=8)
    order = []

    async def run():
        await p.admit_request()

        async def wait(i):
            await p.admit_request()
            order.append(i)
            p.release()

        tasks = [asyncio.ensure_future(wait(i)) for i in range(5)]
        await asyncio.sleep(0)
        p.release()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert order == [0, 1, 2, 3, 4]
