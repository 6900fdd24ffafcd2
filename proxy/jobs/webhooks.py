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
import binascii
import hashlib
import hmac
import time
from typing import Any

import orjson

from ..store.log_rows import rfc3339
from .queue import Job

SECRET_PREFIX = "whsec_"


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


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_<base64>`` secret stands for; ValueError if malformed."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None


def signed_headers(secret: str, message_id: str, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt to deliver ``body``."""
    timestamp = str(int(time.time()))
    signed = f"{message_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }
