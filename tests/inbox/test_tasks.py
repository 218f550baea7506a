"""Celery configuration (research 4.1, RL-07): late acks, no content in tasks, bounded runs."""

from __future__ import annotations

import base64
import inspect
import json
import time
import uuid
from typing import Any

import pytest
from celery.signals import task_prerun

from broker.workers.celery_app import (
    SWEEP_EXPIRES_S,
    TASK_TIME_LIMIT_S,
    VISIBILITY_TIMEOUT_S,
    celery_app,
)

OUR_TASKS = ("outbox.relay", "push.deliver", "log.sequence")


def test_reliability_settings() -> None:
    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.worker_soft_shutdown_timeout > 0
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    # A task is killed before its message could be handed to a second worker.
    assert conf.task_time_limit == TASK_TIME_LIMIT_S < VISIBILITY_TIMEOUT_S
    assert conf.broker_connection_max_retries is None
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.task_ignore_result is True


@pytest.mark.parametrize("name", OUR_TASKS)
def test_tasks_take_no_arguments_so_they_carry_no_content(name: str) -> None:
    celery_app.loader.import_default_modules()
    task = celery_app.tasks[name]
    assert list(inspect.signature(task.run).parameters) == []
    assert task.acks_late is True


def test_every_broker_task_is_argument_free() -> None:
    celery_app.loader.import_default_modules()
    ours = {n: t for n, t in celery_app.tasks.items() if not n.startswith("celery.")}
    assert set(OUR_TASKS) <= set(ours)
    for name, task in ours.items():
        params = inspect.signature(task.run).parameters
        assert all(p.endswith("_id") for p in params), f"{name} takes {list(params)}"


def test_beat_sweeps_are_argument_free_and_expire() -> None:
    schedule = {e["task"]: e for e in celery_app.conf.beat_schedule.values()}
    for task in ("outbox.relay", "push.deliver"):
        entry = schedule[task]
        assert entry["schedule"] <= 5
        assert not entry.get("args")
        assert not entry.get("kwargs")
        assert entry["options"]["expires"] == SWEEP_EXPIRES_S
    assert "log.sequence" in schedule


# Other test runs on this machine share Redis database 15 (and their workers clear wake-up
# flags): these tests use keys of their own.
PREFIX = f"test-{uuid.uuid4().hex[:8]}:"


def isolated_app(celery_module: Any) -> Any:
    app = celery_module.make_celery()
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "global_keyprefix": PREFIX,
    }
    return app


@pytest.mark.redis
def test_wake_ups_are_coalesced_until_the_task_starts_and_carry_no_data(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many commits, one waiting task per job; once a run starts, the next commit sends again."""
    import redis

    from broker import jobs
    from broker import queue as celery_module  # the app's configuration and `celery_app`
    from broker.config import Profile, settings
    from tests.inbox.stack import wait_until

    cfg = settings().model_copy(update={"redis_url": redis_url, "profile": Profile.production})
    monkeypatch.setattr(jobs, "settings", lambda: cfg)
    monkeypatch.setattr(celery_module, "settings", lambda: cfg)
    monkeypatch.setattr(celery_module, "celery_app", isolated_app(celery_module))
    monkeypatch.setattr(jobs, "FLAG", f"{PREFIX}wake:")
    r: Any = redis.Redis.from_url(redis_url)  # sync client (its stubs type replies as either)
    flag = jobs.FLAG + "outbox.relay"
    r.delete(PREFIX + "delivery", flag)
    publisher = jobs._Publisher()
    publisher.start()

    def settled_queue() -> int:
        time.sleep(0.3)  # whatever the publisher would still send
        return int(r.llen(PREFIX + "delivery"))

    for _ in range(20):
        publisher.request("outbox.relay")
    wait_until(lambda: r.llen(PREFIX + "delivery") >= 1, 10, "the wake-up task")
    assert settled_queue() == 1
    assert 0 < r.pttl(flag) <= jobs.FLAG_TTL_MS
    publisher.request("outbox.relay")  # the task has not started: it will see this commit
    assert settled_queue() == 1
    (raw,) = r.lrange(PREFIX + "delivery", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "outbox.relay"
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([], {})  # a name, no ids, no content
    # The worker starts the task: `task_prerun` clears the flag, and the next commit wakes it.
    celery_module.celery_app.loader.import_default_modules()
    task = celery_app.tasks["outbox.relay"]
    task_prerun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
    assert r.exists(flag) == 0
    publisher.request("outbox.relay")
    wait_until(lambda: r.llen(PREFIX + "delivery") >= 2, 10, "the second wake-up")
    assert settled_queue() == 2
    r.delete(PREFIX + "delivery", flag)


@pytest.mark.redis
def test_sequencer_wake_ups_are_throttled_with_a_trailing_one(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log sequencer: one run per spacing however many commits, and one after the last."""
    import redis

    from broker import jobs
    from broker import queue as celery_module  # the app's configuration and `celery_app`
    from broker.config import Profile, settings
    from tests.inbox.stack import wait_until

    cfg = settings().model_copy(update={"redis_url": redis_url, "profile": Profile.production})
    monkeypatch.setattr(jobs, "settings", lambda: cfg)
    monkeypatch.setattr(celery_module, "settings", lambda: cfg)
    monkeypatch.setattr(celery_module, "celery_app", isolated_app(celery_module))
    monkeypatch.setattr(jobs, "FLAG", f"{PREFIX}wake:")
    r: Any = redis.Redis.from_url(redis_url)  # sync client (its stubs type replies as either)
    flag = jobs.FLAG + "log.sequence"
    r.delete(PREFIX + "celery", flag)
    spacing = jobs.SPACED_S["log.sequence"]
    # Imported first: the first import takes longer than the spacing this test depends on.
    celery_module.celery_app.loader.import_default_modules()
    task = celery_app.tasks["log.sequence"]
    publisher = jobs._Publisher()
    publisher.start()
    publisher.request("log.sequence")
    wait_until(lambda: r.llen(PREFIX + "celery") >= 1, 10, "the first wake-up")
    # The run starts at once; its start does not clear a throttled job's flag.
    task_prerun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
    assert r.exists(flag) == 1
    calls: list[str] = []
    real_redis = jobs._redis

    class Counting:
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(real_redis(), name)

    monkeypatch.setattr(jobs, "_redis", Counting)
    for _ in range(20):  # commits after the run started: one trailing wake-up for all
        publisher.request("log.sequence")
        time.sleep(0.002)
    assert r.llen(PREFIX + "celery") == 1
    # Once the trailing wake-up is due, further commits cost no Redis command at all.
    assert calls == ["set", "pttl"], calls
    wait_until(lambda: r.llen(PREFIX + "celery") >= 2, 10 * spacing, "the trailing wake-up")
    time.sleep(3 * spacing)
    assert r.llen(PREFIX + "celery") == 2
    r.delete(PREFIX + "celery", flag)


def test_delivery_has_its_own_queue_and_every_worker_consumes_both() -> None:
    router = celery_app.amqp.router
    for name in ("outbox.relay", "push.deliver"):
        assert router.route({}, name)["queue"].name == "delivery"
    assert router.route({}, "log.sequence")["queue"].name == "celery"
    assert {q.name for q in celery_app.conf.task_queues} == {"celery", "delivery"}


def test_a_delivery_worker_sweeps_the_outbox_as_soon_as_it_is_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows left while no worker ran go out at once; the pool process warms up on the sweep."""
    from celery.signals import worker_ready
    from kombu import Queue

    import broker.workers.celery_app as celery_module

    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        celery_module.celery_app, "send_task", lambda name, **kw: sent.append((name, kw))
    )

    class Consumer:  # what `worker_ready` is sent with (a worker's consumer), hashable
        def __init__(self, *queues: str) -> None:
            self.task_consumer = type("TaskConsumer", (), {"queues": [Queue(q) for q in queues]})

    def ready(*queues: str) -> None:
        worker_ready.send(sender=Consumer(*queues))

    ready("celery")  # a worker that does not deliver sends nothing
    assert sent == []
    ready("celery", "delivery")
    ready("delivery")
    assert sent == [("outbox.relay", {"expires": SWEEP_EXPIRES_S})] * 2
