"""Async jobs with signed webhooks (DESIGN 19; README, "Async jobs").

:mod:`.api` the endpoints, :mod:`.spool` the uploads on disk, :mod:`.queue` the
jobs and their leases in the store, :mod:`.worker` the workers that run them
through :mod:`.runner` (the synchronous pipeline and dispatch),
:mod:`.webhooks` what a webhook says and its signature, :mod:`.delivery` the
SSRF-safe sender, :mod:`.deliveries` their schedule and record, :mod:`.sweeper`
expiry, :mod:`.service` the parts' lifetime in the app.
"""

from .api import add_job_routes
from .service import JOBS_KEY, Jobs, jobs_context

__all__ = ["JOBS_KEY", "Jobs", "add_job_routes", "jobs_context"]
