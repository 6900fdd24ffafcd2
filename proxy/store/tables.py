"""The store's schema as the code reads and writes it today (:mod:`.migrations` builds it).

Times are Unix epoch milliseconds (UTC) in a BIGINT: the same type, comparisons
and bucket arithmetic (``timestamp / width * width``) on SQLite and PostgreSQL,
which share no date-time type.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Double, Integer, MetaData, Table, Text

from .latency_bins import BIN_COLUMNS

metadata = MetaData()

#: One row per request, realtime session, realtime turn and long-audio chunk (the
#: last two under their session's or request's id, ``parent_request_id``).
request_log = Table(
    "request_log",
    metadata,
    Column("id", Text, primary_key=True),
    Column("parent_request_id", Text),
    Column("timestamp", BigInteger, nullable=False),
    Column("object", Text, nullable=False),
    Column("provider", Text),
    Column("model_requested", Text),
    Column("model_deployment", Text),
    Column("virtual_key_id", Text),
    Column("status", Text, nullable=False),
    Column("status_code", Integer),
    Column("error_code", Text),
    Column("latency", BigInteger),
    Column("first_event_latency", BigInteger),
    Column("stream", Boolean, nullable=False),
    Column("response_format", Text),
    Column("bytes_in", BigInteger),
    Column("audio_seconds", Double),
    Column("audio_seconds_source", Text),
    Column("cost", Double),
    Column("number_of_retries", Integer, nullable=False),
    Column("fallback_index", Integer),
    Column("cache_hit", Boolean, nullable=False),
    Column("replica", Text),
    Column("content", Text),
    Column("trace_id", Text),
    Column("actor", Text),
    Column("subject", Text),
)

#: Usage totals per hour and per day, recomputed from ``request_log`` once an hour has
#: passed (and again when a late row changes it): what ``usage()`` reads instead of
#: every row. ``dimension`` is ``virtual_key``, ``model`` or ``provider``; ``key`` is
#: ``''`` for every key's rows together, or a virtual key's id for its own (so a key
#: sees its usage by model or provider); ``value`` is ``''`` for rows with none.
usage_rollup = Table(
    "usage_rollup",
    metadata,
    Column("grain", Text, primary_key=True),
    Column("dimension", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("start", BigInteger, primary_key=True, autoincrement=False),
    Column("value", Text, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("audio_seconds", Double, nullable=False),
    Column("cost", Double, nullable=False),
    # Read from the histogram when the row is written: a bucket that is one row (an
    # hour of a 1h query, a day of a 1d one) is answered without its 93 bins.
    Column("latency_p50", BigInteger),
    Column("latency_p95", BigInteger),
    *(Column(name, BigInteger, nullable=False) for name in BIN_COLUMNS),
)

#: Hours whose rows changed since their rollup was computed (``marks`` counts the
#: changes, so a change made while the rollup is recomputed is not lost).
usage_dirty = Table(
    "usage_dirty",
    metadata,
    Column("start", BigInteger, primary_key=True, autoincrement=False),
    Column("marks", BigInteger, nullable=False),
)

#: Virtual keys (``kind`` ``virtual_key``), rate limits and budgets managed at run time:
#: ``spec`` is the config file's shape as JSON, without ``id`` and never with a key's
#: value (only its SHA-256, hex, and last four characters). ``actor`` made the last change.
governance_entries = Table(
    "governance_entries",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("id", Text, primary_key=True),
    Column("spec", Text, nullable=False),
    Column("rate_limit_id", Text),
    Column("budget_id", Text),
    Column("value_hash", Text, unique=True),
    Column("value_last4", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("actor", Text, nullable=False),
)

#: One row (``id`` 1) whose ``version`` every change to ``governance_entries`` moves on, in
#: the change's own transaction: replicas poll it to know when to read them again.
governance_version = Table(
    "governance_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

#: The ids of deleted virtual keys, never given to another key: the request log, usage,
#: counters and JWTs name a key by id, and a new key would inherit them all.
governance_retired = Table(
    "governance_retired",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("id", Text, primary_key=True),
    Column("retired_at", BigInteger, nullable=False),
)

#: One row per async job (:mod:`proxy.jobs`): what to run, who may see it, its lease
#: while a worker runs it, its result, and its webhook's delivery state. Times in ms.
async_jobs = Table(
    "async_jobs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("task", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("caller_kind", Text, nullable=False),
    Column("virtual_key_id", Text),
    Column("model", Text, nullable=False),
    Column("fields", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("length", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("claims", Integer, nullable=False),
    Column("lease_owner", Text),
    Column("lease_token", Text),
    Column("lease_until", BigInteger),
    Column("status_code", Integer),
    Column("result", Text),
    Column("error", Text),
    Column("webhook_url", Text),
    Column("webhook_message_id", Text),
    Column("webhook_state", Text),
    Column("webhook_attempts", Integer, nullable=False),
    Column("webhook_next_at", BigInteger),
    # What its submit reserved against its key's limits and budgets (JSON).
    Column("reservation", Text),
)

#: Every attempt to deliver a job's webhook (``GET .../{job_id}/deliveries``).
async_job_deliveries = Table(
    "async_job_deliveries",
    metadata,
    Column("id", Text, primary_key=True),
    Column("job_id", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("attempted_at", BigInteger, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("latency_ms", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger),
)
