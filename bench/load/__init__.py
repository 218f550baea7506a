"""System-level load suite (issue 9): the whole broker under open-loop traffic, next to medallion.

    .venv/bin/python -m bench.load step      [--start 5 --inc 5 --max 100 --step-seconds 30]
    .venv/bin/python -m bench.load sustained [--knee K | --rate R] [--minutes 10]
    .venv/bin/python -m bench.load burst     [--knee K] [--burst-seconds 60]
    .venv/bin/python -m bench.load soak      [--knee K | --rate R] [--minutes 30]
    .venv/bin/python -m bench.load peer      [--peer-seconds 20 --peer-clients 4 --page 10]
    .venv/bin/python -m bench.load size      [--sizes 1000,1000000 --size-rate 20]

Every run starts the production profile itself (`stack.py`): its own PostgreSQL database
(`--db`, dropped and migrated; the demo world with MEKONG-DRAGON widened to 27 parties, keys
and tokens for every actor), Redis db 12 (flushed), `broker serve --workers 2` (uvicorn), a
delivery worker (`broker worker --concurrency 1 --queues delivery`), a log worker (`--queues
celery`) and `broker beat`, as docker-compose runs them (`--layout shared`: one worker for
both queues). The submit rate
limits are raised (counted in Redis on every request, never refusing); the long-poll cap is the
product's (64 waiting polls per API process; `--longpoll-total N` sets another).

Traffic (`traffic.py`): the 26 member focal points submit signed, encrypted 4 KB alerts to 1, 3
or 26 recipients under MEKONG-DRAGON (`--mix`, default 30 % / 55 % / 10 %) plus 5 %
out-of-scope attempts (an offence the agreement does not cover: must be refused with a 4xx);
every one of the 27 parties long-polls its inbox, opens each envelope and posts its signed ack;
an auditor pages `GET /v1/audit/events` at `--audit-rate`. The open loop sends each request at
its scheduled time (latency from that time). Envelopes and acks are pre-built in a process
pool before each timed phase; the submitter, the recipients and the auditor are separate
processes. CPU is read from /proc for each side: the broker's processes (API, Celery worker,
beat), its PostgreSQL backends, the Redis server, the clients (and the whole box, so that other
work on a shared machine shows as "other").

Modes:

- `step`: a warm-up, then steps of `--step-seconds` from `--start` by `--inc`; the knee is the
  first step whose submit p99 (from the scheduled time) passes `--p99-ms` (100) or whose error
  share passes `--max-errors` (0.1 %); `--steps-past-knee` more steps are run. Writes a PNG of
  throughput and latency per step and over time next to the JSON.
- `sustained`: half the knee (`--knee`, or the latest `load-step-*.json`) for `--minutes` (10).
- `burst`: 3 times the knee for `--burst-seconds` (60), then nothing: the drain time is from
  the last scheduled send to the moment every delivery made in the burst is acknowledged.
- `soak`: like sustained (30 minutes by default); RSS, open files and threads of every broker
  process are sampled every `--sample-seconds` (10) in every mode; the memory figures compare
  the sample at 2 minutes (or 20 % of the run) with the last.
- `peer`: medallion side by side (`peer.py`).
- `size`: the same figures with 1 thousand and 1 million stored messages (`preload.py`).

Checks that fail a run (exit status 1): a delivery lost (accepted, never seen by its
recipient), duplicated (seen twice) or unexpected; any 5xx; a receiver problem (an envelope
that does not open or differs from what was sent, an ack refused); stored messages different
from accepted ones; a delivery of the run not acknowledged; an accepted alert whose
`msg.accepted` event is not on the log (after up to 120 s for the sequencer); a broker process
that died. The step test's knee rule does not fail a run: it is the measurement.

Output: `bench/results/load-<mode>-<time>.json` (summaries, per-step figures, per-second
timeline, resource samples, CPU split, checks), a table on stdout, and for `step` a PNG.
medallion and matplotlib live in `bench/.peer-venv` (git-ignored), never in the project's venv:

    python3 -m venv bench/.peer-venv
    bench/.peer-venv/bin/pip install medallion==3.0.0 gunicorn matplotlib
"""
