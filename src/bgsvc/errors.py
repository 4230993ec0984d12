"""One exception hierarchy with stable codes; app.py maps it to HTTP in one place."""

from __future__ import annotations

from starlette.responses import JSONResponse

# The runtime is an extra because its CPU and GPU wheels conflict (pyproject.toml).
NO_ONNXRUNTIME = (
    "onnxruntime is not installed: pip install 'bgsvc[cpu]' (CPU) or 'bgsvc[gpu]' (CUDA), "
    "one of the two"
)


def is_missing_onnxruntime(exc: BaseException) -> bool:
    """True when ``exc`` is the import of onnxruntime (or a submodule) failing."""
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "onnxruntime"


class BgsvcError(Exception):
    """Base of every error a client may see; ``code`` is stable and machine-readable."""

    code = "internal_error"
    status = 500
    # Label for bgsvc_rejections_total; None means "not counted as a rejection".
    reason: str | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidParameter(BgsvcError):
    code = "invalid_parameter"
    status = 400
    reason = "invalid_parameter"


class MissingImage(BgsvcError):
    code = "missing_image"
    status = 400
    reason = "invalid_parameter"


class InvalidImage(BgsvcError):
    code = "invalid_image"
    status = 400
    reason = "invalid_image"


class UploadTooLarge(BgsvcError):
    code = "upload_too_large"
    status = 413
    reason = "too_large"


class TooManyPixels(BgsvcError):
    code = "image_too_large"
    status = 413
    reason = "too_many_pixels"


class UnsupportedFormat(BgsvcError):
    code = "unsupported_format"
    status = 415
    reason = "unsupported_format"


class ModelNotAvailable(BgsvcError):
    code = "model_not_available"
    status = 400
    reason = "invalid_parameter"


class NoForeground(BgsvcError):
    code = "no_foreground"
    status = 422
    reason = "no_foreground"


class Overloaded(BgsvcError):
    code = "overloaded"
    status = 429
    reason = "queue_full"


class NotReady(BgsvcError):
    code = "not_ready"
    status = 503
    reason = "not_ready"


class RequestTimeout(BgsvcError):
    code = "timeout"
    status = 504
    reason = "timeout"


# --- Slow and abusive connections (bgsvc.middleware, bgsvc.http_protocol). ---------------


class UploadTimedOut(BgsvcError):
    """The request body did not arrive within BGSVC_BODY_READ_TIMEOUT_S. The connection is
    closed with the answer: the rest of a trickled body is not worth waiting for."""

    code = "upload_timeout"
    status = 408
    reason = "upload_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"Connection": "close"}


class HeaderTimedOut(BgsvcError):
    """A request's head (request line and headers) did not arrive within
    BGSVC_HEADER_TIMEOUT_S; answered by the node's HTTP protocol, then the connection closes."""

    code = "header_timeout"
    status = 408
    reason = "header_timeout"


class HeadersTooLarge(BgsvcError):
    """A request's head is larger than BGSVC_MAX_HEADER_BYTES; answered by the node's HTTP
    protocol, then the connection closes."""

    code = "headers_too_large"
    status = 431
    reason = "too_large"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"Connection": "close"}


class TooManyConnections(BgsvcError):
    """The process holds BGSVC_MAX_CONNECTIONS connections (or that many requests are still
    running); a balancer retries a 503 on another node."""

    code = "too_many_connections"
    status = 503
    reason = "too_many_connections"

    def __init__(self, message: str, *, retry_after: int | None = 1) -> None:
        super().__init__(message, retry_after=retry_after)
        # Freeing this connection is the point: the client reconnects when it retries.
        self.headers = {"Connection": "close"}


class ModelError(BgsvcError):
    """A model file is missing, corrupt or unusable; raised at start-up and by the CLI."""

    code = "model_error"
    status = 500


class ProviderUnavailable(ModelError):
    code = "provider_unavailable"


# --- HTTP mapping: the one place where errors become responses. -------------------------

REMOVEBG_PREFIX = "/v1.0/"


def error_body(exc: BgsvcError, request_id: str, path: str) -> dict[str, object]:
    """The JSON body for ``exc``: remove.bg's shape on its paths, ours elsewhere."""
    if path.startswith(REMOVEBG_PREFIX):
        return {"errors": [{"title": exc.message, "code": exc.code}], "request_id": request_id}
    return {"code": exc.code, "message": exc.message, "request_id": request_id}


def error_headers(exc: BgsvcError, request_id: str) -> dict[str, str]:
    """Headers for an error response (Retry-After on 429/503)."""
    headers = {"X-Request-ID": request_id}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    headers.update(getattr(exc, "headers", None) or {})
    return headers


def error_response(exc: BgsvcError, request_id: str, path: str) -> JSONResponse:
    """The response for a domain error."""
    return JSONResponse(
        error_body(exc, request_id, path),
        status_code=exc.status,
        headers=error_headers(exc, request_id),
    )


# --- Result storage (bgsvc.storage). ----------------------------------------------------


class StorageConfigError(BgsvcError):
    """BGSVC_STORAGE_URL or the backend it names cannot be used; raised at start-up."""

    code = "storage_config"
    status = 500


class StorageUnavailable(BgsvcError):
    """The result store did not answer (S3 down, disk full, permissions)."""

    code = "storage_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after: int | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)


# --- Outbound requests (bgsvc.outbound): URL inputs and webhook deliveries. ------------


class UrlInvalid(BgsvcError):
    """The URL cannot be parsed into a scheme, a host and a port."""

    code = "url_invalid"
    status = 400
    reason = "url_invalid"


class UrlForbidden(BgsvcError):
    """The scheme is not http(s), or the host is (or resolves to) an address the outbound
    policy refuses: loopback, private, link-local, multicast, reserved..."""

    code = "url_forbidden"
    status = 400
    reason = "url_forbidden"


class UrlFetchFailed(BgsvcError):
    """The host could not be resolved or reached, timed out, redirected where it may not,
    or answered with an error status."""

    code = "url_fetch_failed"
    status = 400
    reason = "url_fetch_failed"


class UrlTooLarge(BgsvcError):
    """The response body is larger than the limit (declared or counted while streaming)."""

    code = "url_too_large"
    status = 400
    reason = "url_too_large"


# --- Asynchronous jobs (bgsvc.jobs). ----------------------------------------------------


class JobNotFound(BgsvcError):
    """No job has this id (never had, or its record was purged after expiry)."""

    code = "job_not_found"
    status = 404


class JobNotFinished(BgsvcError):
    """The job is queued or running: its result does not exist yet."""

    code = "job_not_finished"
    status = 409


class JobHasNoResult(BgsvcError):
    """The job failed or was canceled: it has no result and never will."""

    code = "job_no_result"
    status = 409


class JobRunning(BgsvcError):
    """A running job cannot be canceled; it ends on its own within the time limit."""

    code = "job_running"
    status = 409


class JobExpired(BgsvcError):
    """The job's result outlived BGSVC_JOB_TTL_S and was deleted."""

    code = "job_expired"
    status = 410


class JobQueueFull(BgsvcError):
    """BGSVC_JOB_QUEUE_LIMIT unfinished jobs are waiting already."""

    code = "job_queue_full"
    status = 429
    reason = "job_queue_full"


class IdempotencyKeyReused(BgsvcError):
    """An Idempotency-Key already names a job submitted with another image or options."""

    code = "idempotency_key_reused"
    status = 422
    reason = "invalid_parameter"


class WebhooksDisabled(BgsvcError):
    """A callback_url was given but no secret could sign its deliveries (neither the key's
    own nor BGSVC_WEBHOOK_SECRET)."""

    code = "webhooks_disabled"
    status = 400
    reason = "invalid_parameter"


class JobTimedOut(BgsvcError):
    """One attempt ran past BGSVC_JOB_TIMEOUT_S (recorded in the job, never an HTTP answer)."""

    code = "job_timeout"
    status = 500


class JobAttemptsExhausted(BgsvcError):
    """Every attempt ended without a result: the process died or the store failed each time
    (recorded in the job, never an HTTP answer)."""

    code = "job_attempts_exhausted"
    status = 500


class BatchNotFound(BgsvcError):
    """No batch has this id."""

    code = "batch_not_found"
    status = 404


class BatchTooLarge(BgsvcError):
    """More images than BGSVC_BATCH_MAX_ITEMS, or a zip whose entries unpack past the
    size limits (a zip bomb is refused before it is unpacked)."""

    code = "batch_too_large"
    status = 413
    reason = "too_large"


class InvalidArchive(BgsvcError):
    """The batch's zip upload is not a readable zip, or holds no image."""

    code = "invalid_archive"
    status = 400
    reason = "invalid_parameter"


class JobsUnavailable(BgsvcError):
    """The shared job store (Redis) does not answer: jobs can be neither submitted nor
    looked up until it is back; nothing already accepted is lost."""

    code = "jobs_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after: int | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)


class BatchRunning(BgsvcError):
    """Items of the batch are running: it cannot be deleted until they end (its queued
    items were canceled meanwhile)."""

    code = "batch_running"
    status = 409


# --- Rate limits and quotas (bgsvc.limits). ---------------------------------------------


class LimitsUnavailable(BgsvcError):
    """The limits store (Redis, or the node's SQLite file) did not answer and
    BGSVC_RATE_LIMIT_FAIL_OPEN is false: the request is refused rather than admitted
    unchecked."""

    code = "limits_unavailable"
    status = 503
    reason = "limits_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = 2) -> None:
        super().__init__(message, retry_after=retry_after)


# --- Access control (bgsvc.auth). -------------------------------------------------------


class AuthRequired(BgsvcError):
    """No API key, or one the service does not know (X-Api-Key or Authorization: Bearer)."""

    code = "unauthorized"
    status = 401
    reason = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # RFC 9110: a 401 names its scheme; X-Api-Key clients get the same challenge.
        self.headers = {"WWW-Authenticate": 'Bearer realm="bgsvc"'}


class Forbidden(BgsvcError):
    """The key is revoked, or lacks the scope this route needs."""

    code = "forbidden"
    status = 403
    reason = "forbidden"


class QuotaExceeded(BgsvcError):
    """The key's monthly quota is used up (remove.bg answers 402 for missing credits)."""

    code = "quota_exceeded"
    status = 402
    reason = "quota_exceeded"


class RateLimited(BgsvcError):
    """The key's rate (or the address's failed-authentication budget) is spent for now."""

    code = "rate_limited"
    status = 429
    reason = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: int | None = 1, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.headers = headers or {}


class AuthUnavailable(BgsvcError):
    """The key store (Redis) does not answer: keys cannot be checked, so nothing passes."""

    code = "auth_unavailable"
    status = 503
    reason = "auth_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)
