"""What a job's webhook says, and its Standard Webhooks signature.

The body is ``{"type": "<task>.<completed|failed>", "timestamp", "data": <the job as
GET returns it>}``; the headers are ``webhook-id`` (one per event, the same on
every retry, so a receiver can drop repeats), ``webhook-timestamp`` (Unix
seconds of this attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``, keyed with the base64 part of the ``whsec_`` secret, as
https://www.standardwebhooks.com specifies (and its ``Webhook.verify`` checks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson

from ..config.schema import webhook_key
from ..store.log_rows import rfc3339
from .queue import Job


def job_document(job: Job) -> dict[str, Any]:
    """The job as ``GET .../{job_id}`` answers it (and its webhook's ``data``)."""
    document: dict[str, Any] = {
        "id": job.id,
        "object": "async_job",
        "status": job.status,
        "model": job.model,
        "created_at": rfc3339(job.created_at),
        "expires_at": rfc3339(job.expires_at),
    }
    if job.finished_at is not None:
        document["finished_at"] = rfc3339(job.finished_at)
    if job.status == "completed":
        document["result"] = job.result
    elif job.status == "failed":
        document["status_code"] = job.status_code
        document["error"] = job.error
    return document


def event_body(job: Job, now_ms: int) -> bytes:
    """The webhook's body for ``job``, which has ended."""
    return orjson.dumps(
        {
            "type": f"{job.task}.{job.status}",
            "timestamp": rfc3339(now_ms),
            "data": job_document(job),
        }
    )


def signed_headers(secret: str, message_id: str, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt to deliver ``body``."""
    timestamp = str(int(time.time()))
    signed = f"{message_id}.{timestamp}.".encode() + body
    key = webhook_key(secret)
    if key is None:  # the config's loading refuses such a secret
        raise ValueError("a webhook secret is whsec_ and a base64 key")
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }
