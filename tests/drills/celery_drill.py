"""The production Celery app, with a visibility timeout a drill can wait out.

`celery -A tests.drills.celery_drill worker`: the same tasks and settings as
`broker.workers.celery_app`, except that `DRILL_VISIBILITY_S` (default: the production value) sets the
Redis visibility timeout and unacknowledged messages are looked for every second, so a worker
paused past the timeout sees its task handed to another worker within seconds (celery#7918).
"""

from __future__ import annotations

import os

from broker.workers.celery_app import VISIBILITY_TIMEOUT_S, celery_app

celery_app.conf.broker_transport_options = {
    **celery_app.conf.broker_transport_options,
    "visibility_timeout": float(os.environ.get("DRILL_VISIBILITY_S", VISIBILITY_TIMEOUT_S)),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
    # A worker killed -9 while it holds the restore mutex would block restores for 300 s.
    "unacked_mutex_expire": 5,
}
app = celery_app
