"""What flow control is doing, as operators read it (migration 0011): the views
``limit_usage`` and ``queue_flow`` through the client."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from skiplock import Client, JobSpec, LimitSummary, LimitUsage, QueueFlow
from skiplock.queue.store import Completion

LEASE = 30.0


async def enqueue_keyed(
    client: Client, keys: Sequence[Sequence[str] | None], **spec: Any
) -> list[uuid.UUID]:
    """Enqueue one job per entry of ``keys`` and give each those limit keys (in order)."""
    jobs = await client.enqueue_many([JobSpec(task="t", **spec) for _ in keys])
    for job, k in zip(jobs, keys, strict=True):
        await client.pool.execute(
            "UPDATE skiplock.jobs SET limit_keys = $2 WHERE id = $1",
            job.id,
            None if k is None else list(k),
        )
    return [j.id for j in jobs]


async def claim(client: Client, n: int, queues: list[str] | None = None) -> list[Any]:
    return await client.store.claim_jobs(client.pool, queues or ["default"], n, LEASE, "w1")


async def test_limit_usage_shows_each_key_in_use_and_what_waits_on_it(client: Client) -> None:
    """'user:*' at 2 running: user 1 runs 2 with 1 waiting (at its limit), user 2 runs 1;
    a key no limit matches, and a limit without keys in use, have no row."""
    await client.set_limit("user:*", max_running=2)
    await client.set_limit("idle:*", max_running=1)
    await enqueue_keyed(client, [["user:1"]] * 3 + [["user:2"], ["other"]])
    assert len(await claim(client, 10)) == 4

    usage = await client.limit_usage()
    assert usage == [
        LimitUsage("user:*", "user:1", 2, 2, None, None, None, 1, True),
        LimitUsage("user:*", "user:2", 2, 1, None, None, None, 0, False),
    ]
    assert await client.limit_usage(at_limit=True) == usage[:1]
    assert await client.limit_usage("idle:*") == []


async def test_limit_usage_counts_starts_in_the_window(client: Client) -> None:
    """A rate limit: starts in the window count (starts logged by the claim), and a key
    whose jobs all finished stays in use while its starts are in the window."""
    await client.set_limit("api:*", max_starts=2, per=3600)
    await enqueue_keyed(client, [["api:a"]] * 3)
    started = await claim(client, 10)
    assert len(started) == 2
    done = await client.store.complete_jobs(
        client.pool, [Completion(j.id, j.lease_token, "succeeded", "null") for j in started]
    )
    assert len(done) == 2
    assert await client.limit_usage() == [
        LimitUsage("api:*", "api:a", None, 0, 2, 3600.0, 2, 1, True)
    ]
    # Starts older than the window are not counted (and the key is then not in use).
    await client.pool.execute(
        "UPDATE skiplock.limit_starts SET started_at = started_at - interval '2 hours'"
    )
    assert await client.limit_usage() == [
        LimitUsage("api:*", "api:a", None, 0, 2, 3600.0, 0, 1, False)
    ]


async def test_every_limit_matching_a_key_has_its_row(client: Client) -> None:
    """A key matched by a pattern and by itself is listed under both limits, each with its
    own budget; only the exhausted one is at its limit."""
    await client.set_limit("user:*", max_running=5)
    await client.set_limit("user:1", max_running=1)
    await enqueue_keyed(client, [["user:1"]] * 2)
    assert len(await claim(client, 10)) == 1
    assert [
        (u.pattern, u.key, u.running, u.queued, u.at_limit) for u in await client.limit_usage()
    ] == [
        ("user:*", "user:1", 1, 1, False),
        ("user:1", "user:1", 1, 1, True),
    ]


async def test_queued_jobs_not_yet_due_are_not_counted(client: Client) -> None:
    await client.set_limit("k", max_running=0)
    await enqueue_keyed(client, [["k"]], delay=3600)
    assert await client.limit_usage() == []
    await enqueue_keyed(client, [["k"]])
    assert [(u.key, u.queued, u.at_limit) for u in await client.limit_usage()] == [("k", 1, True)]


async def test_limit_summary_sums_over_keys_for_every_limit(client: Client) -> None:
    await client.set_limit("user:*", max_running=1)
    await client.set_limit("idle:*", max_running=1)
    await enqueue_keyed(client, [["user:1"]] * 3 + [["user:2"]] * 2 + [["user:3"]])
    assert len(await claim(client, 10)) == 3
    assert await client.limit_summary() == [
        LimitSummary("idle:*", 0, 0, 0, 0, 0),
        LimitSummary("user:*", keys=3, keys_at_limit=3, running=3, queued=3, throttled=3),
    ]


async def test_queue_flow_counts_throttled_jobs_and_shows_switches(client: Client) -> None:
    """Per queue: due queued, running, throttled (waiting on a key at its limit); a paused
    queue without jobs is listed too."""
    await client.set_limit("user:*", max_running=1)
    await enqueue_keyed(client, [["user:1"]] * 3 + [None])
    await enqueue_keyed(client, [None], queue="media")
    await client.pause("quiet")
    await client.set_fair("media")
    assert len(await claim(client, 10)) == 2
    assert await client.queue_flow() == [
        QueueFlow("default", paused=False, fair=False, queued=2, running=2, throttled=2),
        QueueFlow("media", paused=False, fair=True, queued=1, running=0, throttled=0),
        QueueFlow("quiet", paused=True, fair=False, queued=0, running=0, throttled=0),
    ]


async def test_limit_usage_rows_can_be_capped(client: Client) -> None:
    await client.set_limit("user:*", max_running=0)
    await enqueue_keyed(client, [["user:b"], ["user:a"], ["user:c"]])
    assert [u.key for u in await client.limit_usage(limit=2)] == ["user:a", "user:b"]
    with pytest.raises(ValueError, match="limit must be at least 1"):
        await client.limit_usage(limit=0)
