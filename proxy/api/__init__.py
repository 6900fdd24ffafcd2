"""The operator's API: the request log and usage (``/api/logs``, ``/api/usage``)."""
