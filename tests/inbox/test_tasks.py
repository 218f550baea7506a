"""Celery configuration (research 4.1, RL-07): late acks, no content in tasks, bounded runs."""

from __future__ import annotations

import inspect
import threading

import pytest

from workers.celery_app import (
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


def test_wake_ups_publish_the_job_name_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from broker import jobs

    sent: list[tuple[tuple[object, ...], dict[str, object]]] = []
    published = threading.Event()

    def send_task(*args: object, **kwargs: object) -> None:
        sent.append((args, kwargs))
        published.set()

    monkeypatch.setattr(celery_app, "send_task", send_task)
    publisher = jobs._Publisher()
    publisher.start()
    publisher.request("outbox.relay")
    assert published.wait(5)
    assert sent == [(("outbox.relay",), {})]


def test_delivery_has_its_own_queue_and_every_worker_consumes_both() -> None:
    router = celery_app.amqp.router
    for name in ("outbox.relay", "push.deliver"):
        assert router.route({}, name)["queue"].name == "delivery"
    assert router.route({}, "log.sequence")["queue"].name == "celery"
    assert {q.name for q in celery_app.conf.task_queues} == {"celery", "delivery"}
