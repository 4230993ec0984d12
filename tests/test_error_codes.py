"""Error codes, statuses and rejection reasons are a public contract: clients branch on
the codes, dashboards and alerts on the reasons."""

from __future__ import annotations

import pytest

from bgsvc import errors
from bgsvc.errors import (
    AuthRequired,
    AuthUnavailable,
    BatchNotFound,
    BatchRunning,
    BatchTooLarge,
    BgsvcError,
    Forbidden,
    HeadersTooLarge,
    HeaderTimedOut,
    IdempotencyKeyReused,
    InvalidArchive,
    InvalidImage,
    InvalidParameter,
    InvalidVideo,
    JobAttemptsExhausted,
    JobExpired,
    JobHasNoResult,
    JobNotFinished,
    JobNotFound,
    JobQueueFull,
    JobRunning,
    JobsUnavailable,
    JobTimedOut,
    LimitsUnavailable,
    MissingImage,
    ModelError,
    ModelNotAvailable,
    NoForeground,
    NotReady,
    Overloaded,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    RequestTimeout,
    StorageConfigError,
    StorageUnavailable,
    TooManyConnections,
    TooManyFrames,
    TooManyPixels,
    UnsupportedFormat,
    UploadTimedOut,
    UploadTooLarge,
    UrlFetchFailed,
    UrlForbidden,
    UrlInvalid,
    UrlTooLarge,
    VideoNeedsJob,
    VideoTimedOut,
    VideoTooLarge,
    WebhooksDisabled,
)

CONTRACT: list[tuple[type[BgsvcError], str, int, str | None]] = [
    (BgsvcError, "internal_error", 500, None),
    (InvalidParameter, "invalid_parameter", 400, "invalid_parameter"),
    (MissingImage, "missing_image", 400, "invalid_parameter"),
    (InvalidImage, "invalid_image", 400, "invalid_image"),
    (UploadTooLarge, "upload_too_large", 413, "too_large"),
    (TooManyPixels, "image_too_large", 413, "too_many_pixels"),
    (TooManyFrames, "too_many_frames", 413, "too_many_frames"),
    (UnsupportedFormat, "unsupported_format", 415, "unsupported_format"),
    (InvalidVideo, "invalid_video", 400, "invalid_image"),
    (VideoTooLarge, "video_too_large", 413, "too_large"),
    (VideoNeedsJob, "video_needs_job", 413, "too_large"),
    (VideoTimedOut, "video_timeout", 422, "invalid_image"),
    (ModelNotAvailable, "model_not_available", 400, "invalid_parameter"),
    (NoForeground, "no_foreground", 422, "no_foreground"),
    (Overloaded, "overloaded", 429, "queue_full"),
    (NotReady, "not_ready", 503, "not_ready"),
    (RequestTimeout, "timeout", 504, "timeout"),
    (UploadTimedOut, "upload_timeout", 408, "upload_timeout"),
    (HeaderTimedOut, "header_timeout", 408, "header_timeout"),
    (HeadersTooLarge, "headers_too_large", 431, "too_large"),
    (TooManyConnections, "too_many_connections", 503, "too_many_connections"),
    (ModelError, "model_error", 500, None),
    (ProviderUnavailable, "provider_unavailable", 500, None),
    (StorageConfigError, "storage_config", 500, None),
    (StorageUnavailable, "storage_unavailable", 503, None),
    (UrlInvalid, "url_invalid", 400, "url_invalid"),
    (UrlForbidden, "url_forbidden", 400, "url_forbidden"),
    (UrlFetchFailed, "url_fetch_failed", 400, "url_fetch_failed"),
    (UrlTooLarge, "url_too_large", 400, "url_too_large"),
    (JobNotFound, "job_not_found", 404, None),
    (JobNotFinished, "job_not_finished", 409, None),
    (JobHasNoResult, "job_no_result", 409, None),
    (JobRunning, "job_running", 409, None),
    (JobExpired, "job_expired", 410, None),
    (JobQueueFull, "job_queue_full", 429, "job_queue_full"),
    (IdempotencyKeyReused, "idempotency_key_reused", 422, "invalid_parameter"),
    (WebhooksDisabled, "webhooks_disabled", 400, "invalid_parameter"),
    (JobTimedOut, "job_timeout", 500, None),
    (JobAttemptsExhausted, "job_attempts_exhausted", 500, None),
    (JobsUnavailable, "jobs_unavailable", 503, None),
    (BatchNotFound, "batch_not_found", 404, None),
    (BatchTooLarge, "batch_too_large", 413, "too_large"),
    (InvalidArchive, "invalid_archive", 400, "invalid_parameter"),
    (BatchRunning, "batch_running", 409, None),
    (AuthRequired, "unauthorized", 401, "unauthorized"),
    (Forbidden, "forbidden", 403, "forbidden"),
    (AuthUnavailable, "auth_unavailable", 503, "auth_unavailable"),
    (RateLimited, "rate_limited", 429, "rate_limited"),
    (QuotaExceeded, "quota_exceeded", 402, "quota_exceeded"),
    (LimitsUnavailable, "limits_unavailable", 503, "limits_unavailable"),
]


def test_every_error_a_client_may_see_is_in_the_contract() -> None:
    public = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, BgsvcError) and "code" in vars(cls)
    }
    assert public == {cls for cls, *_ in CONTRACT}


@pytest.mark.parametrize(("cls", "code", "status", "reason"), CONTRACT)
def test_codes_statuses_and_reasons_do_not_change(
    cls: type[BgsvcError], code: str, status: int, reason: str | None
) -> None:
    assert (cls.code, cls.status, cls.reason) == (code, status, reason)


def test_headers_are_the_class_defaults_then_the_callers() -> None:
    assert AuthRequired("no key").headers == {"WWW-Authenticate": 'Bearer realm="bgsvc"'}
    assert UploadTimedOut("slow").headers == {"Connection": "close"}
    assert InvalidParameter("bad").headers == {}
    limited = RateLimited("slow down", headers={"X-RateLimit-Remaining": "0"})
    assert limited.headers == {"X-RateLimit-Remaining": "0"} and limited.retry_after == 1
    # One instance's headers are its own: the class defaults stay as they were.
    UploadTimedOut("slow").headers["X-Extra"] = "1"
    assert UploadTimedOut("slow").headers == {"Connection": "close"}


def test_a_recorded_code_tells_whose_failure_it_was() -> None:
    from bgsvc.errors import status_of

    assert status_of("invalid_video") == 400
    assert status_of("job_expired") == 410
    assert status_of("job_timeout") == status_of("internal_error") == 500
    assert status_of("no_such_code") == 500
