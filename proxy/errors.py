"""The proxy's exception tree and the one error body every failure is sent as.

Every error, whether the proxy's own or an upstream's, reaches the client in
the Bifrost error shape whose ``error`` object is OpenAI's, so OpenAI SDKs
raise the matching exception class.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar


class ProxyError(Exception):
    """Base of every error the proxy answers with.

    ``retryable`` tells the router whether another attempt (a retry or a
    fallback) may succeed where this one failed.
    """

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"
    #: True when the failure is the gateway's own rather than the request's
    #: or the upstream's answer (Bifrost's ``is_bifrost_error``).
    is_bifrost_error: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retryable: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.retryable = retryable
        self.headers: dict[str, str] = dict(headers or {})
        #: The attempts made before the request gave up, when it tried several.
        self.attempts: list[dict[str, Any]] = []

    @property
    def status_code(self) -> int:
        """The HTTP status this error is answered with."""
        return self.status

    @property
    def type(self) -> str:
        """The OpenAI error ``type`` this error is reported as."""
        return self.error_type


class InvalidRequestError(ProxyError):
    """A field is missing, malformed or out of range."""

    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"
    is_bifrost_error = False


class InvalidAudioError(InvalidRequestError):
    """The uploaded file is not audio that can be decoded."""

    default_code = "invalid_audio"
    MESSAGE = "the audio file could not be decoded; is it a supported audio format?"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(f"{self.MESSAGE} ({detail})" if detail else self.MESSAGE, param="file")


class MalformedBodyError(InvalidRequestError):
    """The multipart body cannot be parsed."""

    default_code = "malformed_multipart"


class UnsupportedMediaTypeError(InvalidRequestError):
    """The body is not ``multipart/form-data``."""

    status = 415
    default_code = "unsupported_media_type"


class PayloadTooLargeError(InvalidRequestError):
    """The upload crossed the configured body size limit."""

    status = 413
    default_code = "request_too_large"


class RequestTimeoutError(InvalidRequestError):
    """The client stopped sending its body."""

    status = 408
    default_code = "request_timeout"


class ExpectationFailedError(InvalidRequestError):
    """The request's ``Expect`` header asks for something other than 100-continue."""

    status = 417
    default_code = "expectation_failed"


class ClientGoneError(ProxyError):
    """The client closed the connection before its body was complete.

    Nobody is left to read the answer; the status only matters for logs.
    """

    status = 499
    error_type = "invalid_request_error"
    default_code = "client_closed_request"
    is_bifrost_error = False


class NotFoundError(ProxyError):
    """No route matches the request path."""

    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"
    is_bifrost_error = False


def missing_field(name: str) -> InvalidRequestError:
    """The 400 of a form without its required field ``name``."""
    return InvalidRequestError(f"{name} is required", code="missing_required_field", param=name)


class ConflictError(ProxyError):
    """The change conflicts with what is there: an id taken, an entry something else
    names, an entry the config file holds (409)."""

    status = 409
    error_type = "invalid_request_error"
    default_code = "conflict"
    is_bifrost_error = False


class MethodNotAllowedError(ProxyError):
    """The path exists but not for this method."""

    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"
    is_bifrost_error = False


class UpstreamError(ProxyError):
    """The upstream answered with an error status; its details are passed on."""

    error_type = "api_error"
    default_code = "upstream_error"
    is_bifrost_error = False

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code,
            param=param,
            retryable=status == 429 or status >= 500 if retryable is None else retryable,
            headers=headers,
        )
        self._status = status
        self._type = error_type or _type_for_status(status)

    @property
    def status_code(self) -> int:
        return self._status

    @property
    def type(self) -> str:
        return self._type


class BadGatewayError(ProxyError):
    """The upstream could not be reached or answered something unusable."""

    status = 502
    error_type = "api_error"
    default_code = "bad_gateway"


class GatewayTimeoutError(ProxyError):
    """The upstream did not answer in time."""

    status = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"


class ServiceUnavailableError(ProxyError):
    """The proxy cannot take the request right now."""

    status = 503
    error_type = "api_error"
    default_code = "service_unavailable"


class InsufficientStorageError(ProxyError):
    """The job spool cannot take another upload (its disk is full, or its cap is
    reached): 507, and the jobs it holds are kept."""

    status = 507
    error_type = "api_error"
    default_code = "insufficient_storage"


class AuthenticationError(ProxyError):
    """No usable credential (401)."""

    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"
    is_bifrost_error = False


class PermissionDeniedError(ProxyError):
    """A known caller asking for what it may not have (403)."""

    status = 403
    error_type = "permission_error"
    default_code = "permission_denied"
    is_bifrost_error = False


class RateLimitedError(ProxyError):
    """A virtual key's rate limit is reached (429, with Retry-After)."""

    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    is_bifrost_error = False


class BudgetExceededError(ProxyError):
    """A virtual key's budget is spent (402)."""

    status = 402
    error_type = "insufficient_quota"
    default_code = "budget_exceeded"
    is_bifrost_error = False


class NotReplayableError(ProxyError):
    """A retry needed the upload again, but it was too large to record."""

    status = 502
    error_type = "api_error"
    default_code = "upload_not_replayable"


class UploadOverLimitError(PayloadTooLargeError):
    """The upload crossed the upstream's own size limit.

    Raised inside a streaming upstream request whose length was not known in
    advance, before its body is complete; the proxy then cuts the recording
    into chunks instead (or answers 413 when it cannot).
    """

    default_code = "upload_over_provider_limit"


class ModelIntegrityError(ServiceUnavailableError):
    """The model's weights are not the ones expected."""

    default_code = "model_integrity_failed"


def store_unreachable(what: str, code: str) -> ServiceUnavailableError:
    """The 503 of a request that needs a store (Redis, say) that cannot be reached."""
    return ServiceUnavailableError(
        f"the store that keeps {what} is unreachable", code=code, headers={"Retry-After": "1"}
    )


def _type_for_status(status: int) -> str:
    # The OpenAI error types its SDKs map to exception classes.
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


def new_event_id() -> str:
    """A fresh id tying an error body to the log line that reports it."""
    return f"evt_{uuid.uuid4().hex}"


def error_body(
    error: ProxyError,
    *,
    provider: str | None = None,
    model_requested: str | None = None,
    request_type: str = "transcription",
    event_id: str | None = None,
) -> dict[str, Any]:
    """The JSON document an error is answered with (README, "API": errors)."""
    event_id = event_id or new_event_id()
    extra_fields: dict[str, Any] = {"request_type": request_type}
    if provider is not None:
        extra_fields["provider"] = provider
    if model_requested is not None:
        extra_fields["model_requested"] = model_requested
    if len(error.attempts) > 1:
        extra_fields["attempts"] = error.attempts
    return {
        "event_id": event_id,
        "type": error.type,
        "is_bifrost_error": error.is_bifrost_error,
        "status_code": error.status_code,
        "error": {
            "type": error.type,
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": event_id,
        },
        "extra_fields": extra_fields,
    }
