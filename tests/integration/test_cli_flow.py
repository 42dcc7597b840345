"""``skiplock limits …`` and ``skiplock queues …``: flow control from the command line."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
from click.testing import CliRunner, Result

from skiplock import Client
from skiplock.cli import cli
from tests.integration.test_flow_views import claim, enqueue_keyed


async def _run(dsn: str, *args: str) -> Result:
    runner = CliRunner()
    argv = ["--database-url", dsn, *args]
    return await anyio.to_thread.run_sync(lambda: runner.invoke(cli, argv))


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout.strip().splitlines()[-1])


async def test_limits_set_list_usage_remove(db_dsn: str, client: Client) -> None:
    """set → list (with usage summed per pattern) → usage (per key) → remove."""
    made = _json(await _run(db_dsn, "limits", "set", "user:*", "--max-running", "1", "--json"))
    assert (made["pattern"], made["max_running"], made["max_starts"]) == ("user:*", 1, None)
    rate = _json(
        await _run(db_dsn, "limits", "set", "api", "--max-starts", "5", "--per", "1m", "--json")
    )
    assert (rate["max_starts"], rate["per_seconds"]) == (5, 60.0)
    await enqueue_keyed(client, [["user:1"]] * 2 + [["user:2"]])
    assert len(await claim(client, 10)) == 2

    listed = _json(await _run(db_dsn, "limits", "list", "--json"))["limits"]
    assert [(x["pattern"], x["usage"]) for x in listed] == [
        ("api", {"keys": 0, "keys_at_limit": 0, "running": 0, "queued": 0, "throttled": 0}),
        ("user:*", {"keys": 2, "keys_at_limit": 2, "running": 2, "queued": 1, "throttled": 1}),
    ]
    usage = _json(await _run(db_dsn, "limits", "usage", "--at-limit", "--json"))["usage"]
    assert [(u["key"], u["running"], u["queued"], u["at_limit"]) for u in usage] == [
        ("user:1", 1, 1, True),
        ("user:2", 1, 0, True),
    ]
    text = await _run(db_dsn, "limits", "usage", "--pattern", "user:*")
    assert text.exit_code == 0, text.output
    assert "user:1" in text.stdout
    assert "1/1" in text.stdout

    assert _json(await _run(db_dsn, "limits", "remove", "user:*", "--json")) == {
        "pattern": "user:*",
        "removed": True,
    }
    assert [x.pattern for x in await client.limits()] == ["api"]
    missing = await _run(db_dsn, "limits", "remove", "user:*")
    assert missing.exit_code == 4
    assert "no limit on 'user:*'" in missing.stderr


async def test_bad_limits_are_usage_errors(db_dsn: str, client: Client) -> None:
    """An invalid setting exits 2 with the reason, and writes nothing."""
    for args, reason in [
        (["--max-starts", "5"], "max_starts and per go together"),
        ([], "give max_running, or max_starts and per, or both"),
        (["--max-running", "-1"], "max_running must be between 0"),
    ]:
        result = await _run(db_dsn, "limits", "set", "k", *args)
        assert result.exit_code == 2, result.output
        assert reason in result.stderr
    bad_per = await _run(db_dsn, "limits", "set", "k", "--max-starts", "1", "--per", "soon")
    assert bad_per.exit_code == 2
    assert await client.limits() == []


async def test_queues_pause_resume_fair_weight_list(db_dsn: str, client: Client) -> None:
    paused = _json(await _run(db_dsn, "queues", "pause", "media", "--json"))
    assert (paused["name"], paused["paused"], paused["fair"]) == ("media", True, False)
    fair = _json(await _run(db_dsn, "queues", "fair", "media", "--json"))
    assert (fair["paused"], fair["fair"]) == (True, True)
    weight = _json(await _run(db_dsn, "queues", "weight", "media", "acme", "3", "--json"))
    assert weight == {"queue": "media", "fair_key": "acme", "weight": 3}
    await enqueue_keyed(client, [None], queue="media")

    listed = _json(await _run(db_dsn, "queues", "list", "--json"))
    assert listed == {
        "queues": [
            {
                "queue": "media",
                "paused": True,
                "fair": True,
                "queued": 1,
                "running": 0,
                "throttled": 0,
            }
        ],
        "fair_weights": [{"queue": "media", "fair_key": "acme", "weight": 3}],
    }
    resumed = _json(await _run(db_dsn, "queues", "resume", "media", "--json"))
    assert resumed["paused"] is False
    plain = _json(await _run(db_dsn, "queues", "fair", "media", "--off", "--json"))
    assert plain["fair"] is False
    text = await _run(db_dsn, "queues", "list")
    assert text.exit_code == 0, text.output
    assert "media" in text.stdout
    assert "acme" in text.stdout


async def test_bad_queue_settings_are_usage_errors(db_dsn: str, client: Client) -> None:
    for args, reason in [
        (["weight", "q", "k", "0"], "weight must be an integer between 1 and 1000"),
        (["weight", "q", "k", "heavy"], "not an integer"),
        (["pause", "q" * 129], "queue must be a non-empty string"),
    ]:
        result = await _run(db_dsn, "queues", *args)
        assert result.exit_code == 2, result.output
        assert reason in result.stderr
    assert await client.queues() == []
    assert await client.fair_weights() == []
