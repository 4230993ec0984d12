"""The service's errors as types: each has a stable ``code`` (a public contract), the HTTP
``status`` it answers with and the ``reason`` it is counted under when it refuses a request.
How an error becomes a response is bgsvc.error_handlers' business; nothing here knows about
the web framework.

BgsvcError                      internal_error, 500
├── InputError                  what the request sent cannot be used
│   ├── InvalidParameter, MissingImage, ModelNotAvailable
│   ├── InvalidImage, UnsupportedFormat, NoForeground
│   ├── UploadTooLarge, TooManyPixels, TooManyFrames
│   └── VideoError              a video upload (decoded in a child process)
│       └── InvalidVideo, VideoTooLarge, VideoNeedsJob, VideoTimedOut
├── CapacityError               the node cannot take or finish the request now
│   └── Overloaded, NotReady, RequestTimeout
├── ConnectionGuardError        a connection broke a slow- or abusive-client limit
│   └── UploadTimedOut, HeaderTimedOut, HeadersTooLarge, TooManyConnections
├── ModelError                  a model file is missing, corrupt or unusable
│   └── ProviderUnavailable
├── StorageError                the result store
│   └── StorageConfigError, StorageUnavailable
├── UrlError                    an outbound request (URL input or webhook delivery)
│   └── UrlInvalid, UrlForbidden, UrlFetchFailed, UrlTooLarge
├── AsyncJobError               asynchronous jobs (bgsvc.jobs.JobError is a job's record)
│   ├── JobNotFound, JobNotFinished, JobHasNoResult, JobRunning, JobExpired
│   ├── JobQueueFull, JobsUnavailable, IdempotencyKeyReused, WebhooksDisabled
│   ├── JobTimedOut, JobAttemptsExhausted
│   └── BatchError              batches of jobs
│       └── BatchNotFound, BatchTooLarge, InvalidArchive, BatchRunning
├── AuthError                   who the caller is and what the key may do
│   └── AuthRequired, Forbidden, AuthUnavailable
└── LimitsError                 how much a key may use
    └── RateLimited, QuotaExceeded, LimitsUnavailable
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

# The runtime is an extra because its CPU and GPU wheels conflict (pyproject.toml).
NO_ONNXRUNTIME = (
    "onnxruntime is not installed: pip install 'bgsvc[cpu]' (CPU) or 'bgsvc[gpu]' (CUDA), "
    "one of the two"
)


def is_missing_onnxruntime(exc: BaseException) -> bool:
    """True when ``exc`` is the import of onnxruntime (or a submodule) failing."""
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "onnxruntime"


# Read-only: a class's default headers are shared by all its instances.
CLOSE_CONNECTION: Mapping[str, str] = MappingProxyType({"Connection": "close"})


class BgsvcError(Exception):
    """Base of every error a client may see; ``code`` is stable and machine-readable.

    ``headers`` go on the answer, over the class's ``default_headers``; ``retry_after``
    (seconds) becomes its Retry-After."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    # Label for bgsvc_rejections_total; None means "not counted as a rejection".
    reason: ClassVar[str | None] = None
    default_headers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # Raised only after the model ran for the request: the credits it was charged are
    # kept, where any other failure gives them back (else a request made to fail there,
    # on purpose, would buy the model's work for nothing).
    keeps_credits: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.headers: dict[str, str] = {**self.default_headers, **(headers or {})}


# --- What the request sent (bgsvc.imaging, bgsvc.options, the routes). ------------------


class InputError(BgsvcError):
    """The request's image or parameters cannot be used; sending it again will not help."""


class InvalidParameter(InputError):
    code = "invalid_parameter"
    status = 400
    reason = "invalid_parameter"


class MissingImage(InputError):
    code = "missing_image"
    status = 400
    reason = "invalid_parameter"


class InvalidImage(InputError):
    code = "invalid_image"
    status = 400
    reason = "invalid_image"


class UploadTooLarge(InputError):
    code = "upload_too_large"
    status = 413
    reason = "too_large"


class TooManyPixels(InputError):
    code = "image_too_large"
    status = 413
    reason = "too_many_pixels"


class TooManyFrames(InputError):
    """An animation with more frames, or more pixels over all its frames, than a request
    may decode; POST /jobs takes longer ones."""

    code = "too_many_frames"
    status = 413
    reason = "too_many_frames"


class VideoError(InputError):
    """A video upload that cannot be used: undecodable, beyond a limit, or sent where
    videos are not taken."""


class InvalidVideo(VideoError):
    """The container or its streams cannot be read, claim what no clip has (a frame rate
    of a million), or the decoder failed on them (crashed, or ran out of memory)."""

    code = "invalid_video"
    status = 400
    reason = "invalid_image"


class VideoTooLarge(VideoError):
    """Longer, or with more or larger frames, than the video limits; read from the
    container's headers before any frame is decoded."""

    code = "video_too_large"
    status = 413
    reason = "too_large"


class VideoNeedsJob(VideoError):
    """A video sent to a synchronous route: 413 as for an animation too long for a
    request, because the way round is the same (POST /jobs), not another format."""

    code = "video_needs_job"
    status = 413
    reason = "too_large"


class VideoTimedOut(VideoError):
    """The decoder took longer than its deadline for one step: a file built to make the
    decoder spin, or one too costly to decode. Sending it again will not help."""

    code = "video_timeout"
    status = 422
    reason = "invalid_image"


class UnsupportedFormat(InputError):
    code = "unsupported_format"
    status = 415
    reason = "unsupported_format"


class ModelNotAvailable(InputError):
    """The model asked for is not on the allow-list: a parameter, not a ModelError."""

    code = "model_not_available"
    status = 400
    reason = "invalid_parameter"


class NoForeground(InputError):
    code = "no_foreground"
    status = 422
    reason = "no_foreground"
    # Known only from the model's matte (crop=true with no subject in it).
    keeps_credits = True


# --- The node's capacity (bgsvc.inference.scheduler, bgsvc.middleware). ----------------


class CapacityError(BgsvcError):
    """The node cannot take or finish the request now; another try (or node) may."""


class Overloaded(CapacityError):
    code = "overloaded"
    status = 429
    reason = "queue_full"


class NotReady(CapacityError):
    code = "not_ready"
    status = 503
    reason = "not_ready"


class RequestTimeout(CapacityError):
    code = "timeout"
    status = 504
    reason = "timeout"


# --- Slow and abusive connections (bgsvc.middleware, bgsvc.http_protocol). ---------------


class ConnectionGuardError(BgsvcError):
    """A connection broke one of the limits that keep slow or abusive clients from holding
    the node: time, size or count."""


class UploadTimedOut(ConnectionGuardError):
    """The request body did not arrive within BGSVC_BODY_READ_TIMEOUT_S. The connection is
    closed with the answer: the rest of a trickled body is not worth waiting for."""

    code = "upload_timeout"
    status = 408
    reason = "upload_timeout"
    default_headers = CLOSE_CONNECTION


class HeaderTimedOut(ConnectionGuardError):
    """A request's head (request line and headers) did not arrive within
    BGSVC_HEADER_TIMEOUT_S; answered by the node's HTTP protocol, then the connection closes."""

    code = "header_timeout"
    status = 408
    reason = "header_timeout"


class HeadersTooLarge(ConnectionGuardError):
    """A request's head is larger than BGSVC_MAX_HEADER_BYTES; answered by the node's HTTP
    protocol, then the connection closes."""

    code = "headers_too_large"
    status = 431
    reason = "too_large"
    default_headers = CLOSE_CONNECTION


class TooManyConnections(ConnectionGuardError):
    """The process holds BGSVC_MAX_CONNECTIONS connections (or that many requests are still
    running); a balancer retries a 503 on another node."""

    code = "too_many_connections"
    status = 503
    reason = "too_many_connections"
    # Freeing this connection is the point: the client reconnects when it retries.
    default_headers = CLOSE_CONNECTION

    def __init__(self, message: str, *, retry_after: int | None = 1) -> None:
        super().__init__(message, retry_after=retry_after)


# --- Models (bgsvc.inference). ----------------------------------------------------------


class ModelError(BgsvcError):
    """A model file is missing, corrupt or unusable; raised at start-up and by the CLI."""

    code = "model_error"
    status = 500


class ProviderUnavailable(ModelError):
    code = "provider_unavailable"


# --- Result storage (bgsvc.storage). ----------------------------------------------------


class StorageError(BgsvcError):
    """The result store cannot be set up or used."""


class StorageConfigError(StorageError):
    """BGSVC_STORAGE_URL or the backend it names cannot be used; raised at start-up."""

    code = "storage_config"
    status = 500


class StorageUnavailable(StorageError):
    """The result store did not answer (S3 down, disk full, permissions)."""

    code = "storage_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after: int | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)


# --- Outbound requests (bgsvc.outbound): URL inputs and webhook deliveries. ------------


class UrlError(BgsvcError):
    """A URL the service was asked to fetch (an input) or call (a webhook) cannot be used."""


class UrlInvalid(UrlError):
    """The URL cannot be parsed into a scheme, a host and a port."""

    code = "url_invalid"
    status = 400
    reason = "url_invalid"


class UrlForbidden(UrlError):
    """The scheme is not http(s), or the host is (or resolves to) an address the outbound
    policy refuses: loopback, private, link-local, multicast, reserved..."""

    code = "url_forbidden"
    status = 400
    reason = "url_forbidden"


class UrlFetchFailed(UrlError):
    """The host could not be resolved or reached, timed out, redirected where it may not,
    or answered with an error status."""

    code = "url_fetch_failed"
    status = 400
    reason = "url_fetch_failed"


class UrlTooLarge(UrlError):
    """The response body is larger than the limit (declared or counted while streaming)."""

    code = "url_too_large"
    status = 400
    reason = "url_too_large"


# --- Asynchronous jobs and batches (bgsvc.jobs, bgsvc.batches). -------------------------


class AsyncJobError(BgsvcError):
    """A job cannot be submitted, found, read or run (bgsvc.jobs.JobError is the record of
    why one failed)."""


class JobNotFound(AsyncJobError):
    """No job has this id (never had, or its record was purged after expiry)."""

    code = "job_not_found"
    status = 404


class JobNotFinished(AsyncJobError):
    """The job is queued or running: its result does not exist yet."""

    code = "job_not_finished"
    status = 409


class JobHasNoResult(AsyncJobError):
    """The job failed or was canceled: it has no result and never will."""

    code = "job_no_result"
    status = 409


class JobRunning(AsyncJobError):
    """A running job cannot be canceled; it ends on its own within the time limit."""

    code = "job_running"
    status = 409


class JobExpired(AsyncJobError):
    """The job's result outlived BGSVC_JOB_TTL_S and was deleted."""

    code = "job_expired"
    status = 410


class JobQueueFull(AsyncJobError):
    """BGSVC_JOB_QUEUE_LIMIT unfinished jobs are waiting already."""

    code = "job_queue_full"
    status = 429
    reason = "job_queue_full"


class IdempotencyKeyReused(AsyncJobError):
    """An Idempotency-Key already names a job submitted with another image or options."""

    code = "idempotency_key_reused"
    status = 422
    reason = "invalid_parameter"


class WebhooksDisabled(AsyncJobError):
    """A callback_url was given but no secret could sign its deliveries (neither the key's
    own nor BGSVC_WEBHOOK_SECRET)."""

    code = "webhooks_disabled"
    status = 400
    reason = "invalid_parameter"


class JobTimedOut(AsyncJobError):
    """One attempt ran past BGSVC_JOB_TIMEOUT_S (recorded in the job, never an HTTP answer)."""

    code = "job_timeout"
    status = 500


class JobAttemptsExhausted(AsyncJobError):
    """Every attempt ended without a result: the process died or the store failed each time
    (recorded in the job, never an HTTP answer)."""

    code = "job_attempts_exhausted"
    status = 500


class JobsUnavailable(AsyncJobError):
    """The shared job store (Redis) does not answer: jobs can be neither submitted nor
    looked up until it is back; nothing already accepted is lost."""

    code = "jobs_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after: int | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)


class BatchError(AsyncJobError):
    """A batch of jobs cannot be submitted, found or deleted."""


class BatchNotFound(BatchError):
    """No batch has this id."""

    code = "batch_not_found"
    status = 404


class BatchTooLarge(BatchError):
    """More images than BGSVC_BATCH_MAX_ITEMS, or a zip whose entries unpack past the
    size limits (a zip bomb is refused before it is unpacked)."""

    code = "batch_too_large"
    status = 413
    reason = "too_large"


class InvalidArchive(BatchError):
    """The batch's zip upload is not a readable zip, or holds no image."""

    code = "invalid_archive"
    status = 400
    reason = "invalid_parameter"


class BatchRunning(BatchError):
    """Items of the batch are running: it cannot be deleted until they end (its queued
    items were canceled meanwhile)."""

    code = "batch_running"
    status = 409


# --- Access control (bgsvc.auth). -------------------------------------------------------


class AuthError(BgsvcError):
    """The caller's key is missing, unknown, revoked or lacks a scope, or cannot be checked."""


class AuthRequired(AuthError):
    """No API key, or one the service does not know (X-Api-Key or Authorization: Bearer)."""

    code = "unauthorized"
    status = 401
    reason = "unauthorized"
    # RFC 9110: a 401 names its scheme; X-Api-Key clients get the same challenge.
    default_headers = MappingProxyType({"WWW-Authenticate": 'Bearer realm="bgsvc"'})


class Forbidden(AuthError):
    """The key is revoked, or lacks the scope this route needs."""

    code = "forbidden"
    status = 403
    reason = "forbidden"


class AuthUnavailable(AuthError):
    """The key store (Redis) does not answer: keys cannot be checked, so nothing passes."""

    code = "auth_unavailable"
    status = 503
    reason = "auth_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)


# --- Rate limits and quotas (bgsvc.limits, enforced by bgsvc.auth). ---------------------


class LimitsError(BgsvcError):
    """A key (or an address) used up what it may use, or the limits cannot be checked."""


class RateLimited(LimitsError):
    """The key's rate (or the address's failed-authentication budget) is spent for now."""

    code = "rate_limited"
    status = 429
    reason = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: int | None = 1, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after, headers=headers)


class QuotaExceeded(LimitsError):
    """The key's monthly quota is used up (remove.bg answers 402 for missing credits)."""

    code = "quota_exceeded"
    status = 402
    reason = "quota_exceeded"


class LimitsUnavailable(LimitsError):
    """The limits store (Redis, or the node's SQLite file) did not answer and
    BGSVC_RATE_LIMIT_FAIL_OPEN is false: the request is refused rather than admitted
    unchecked."""

    code = "limits_unavailable"
    status = 503
    reason = "limits_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = 2) -> None:
        super().__init__(message, retry_after=retry_after)


def status_of(code: str) -> int:
    """The HTTP status of the error type whose stable code this is (500 for a code none
    has): what an error recorded by a code alone (a job's) says of whose failure it was."""
    found: list[type[BgsvcError]] = [BgsvcError]
    while found:
        cls = found.pop()
        if cls.__dict__.get("code") == code:
            return cls.status
        found.extend(cls.__subclasses__())
    return 500
