"""Settings of the work done later: jobs, batches, videos, and where results are stored."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from bgsvc.config.sections import JOBS, STORAGE, VIDEO, in_section


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "bgsvc"


class JobSettings(BaseModel):
    """Jobs and batches."""

    job_timeout_s: float = Field(
        # Room for the largest animation a job takes (BGSVC_JOB_MAX_FRAMES) on a CPU without
        # AMX: 80 small GIF frames ran past 60 s on every attempt of a 2-core AMD EPYC
        # (OpenVINO bf16, about 1 s a forward pass), and failed after three minutes of model
        # work. A stuck attempt is ended sooner by its own deadlines (the model's watchdog,
        # the media child's step limit); a dead node's jobs by their lease.
        default=300.0,
        gt=0,
        description="Hard limit on one attempt of a job; beyond it, a retry (after the last "
        "attempt, job_timeout).",
        json_schema_extra=in_section(JOBS),
    )
    job_max_frames: int = Field(
        # At the per-frame cost behind BGSVC_SYNC_MAX_FRAMES (0.23-0.25 s), 80 frames take
        # about 19 s; at 1-1.7 s a frame (a CPU without AMX: bf16, or ONNX Runtime f32) up
        # to 136 s, within a job's attempt (BGSVC_JOB_TIMEOUT_S).
        default=80,
        ge=1,
        description="Most frames of an animation a job takes (BGSVC_SYNC_MAX_FRAMES for a "
        "request); the pixels over all frames stay within BGSVC_MAX_PIXELS.",
        json_schema_extra=in_section(JOBS),
    )
    job_max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Attempts per job (time-outs, crashes, storage errors) before it is failed.",
        json_schema_extra=in_section(JOBS),
    )
    job_queue_limit: int = Field(
        default=1000,
        ge=1,
        description="Unfinished (queued or running) jobs accepted; beyond it POST /jobs is 429.",
        json_schema_extra=in_section(JOBS),
    )
    job_queue_limit_per_key: int = Field(
        default=250,
        ge=1,
        description="Unfinished jobs one API key may have (batch items included); beyond it "
        "that key's POST /jobs and /batches are 429 job_queue_full while other keys keep their "
        "room. Applies with BGSVC_AUTH=required; capped by BGSVC_JOB_QUEUE_LIMIT.",
        json_schema_extra=in_section(JOBS),
    )
    job_redeliver_s: float = Field(
        default=10.0,
        ge=1,
        description="With BGSVC_REDIS_URL: a process whose heartbeat is this old is dead, and "
        "its running jobs go to another process (dramatiq's heartbeat_timeout).",
        json_schema_extra=in_section(JOBS),
    )
    batch_max_items: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Images in one POST /batches; beyond it, 413 batch_too_large.",
        json_schema_extra=in_section(JOBS),
    )
    batch_max_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1,
        description="Largest POST /batches body, and largest total uncompressed size of a zip "
        "upload's entries (413); each image is also held to BGSVC_MAX_UPLOAD_BYTES.",
        json_schema_extra=in_section(JOBS),
    )
    batch_max_zip_entries: int = Field(
        default=0,
        ge=0,
        description="Entries a batch's zip may hold, directories and skipped files included, "
        "read from its end record before its directory is parsed (413 batch_too_large "
        "beyond); 0 means 5x BGSVC_BATCH_MAX_ITEMS.",
        json_schema_extra=in_section(JOBS),
    )
    batch_max_intakes: int = Field(
        # One: an intake may hold twice BGSVC_BATCH_MAX_BYTES (400 MiB by default), part of
        # a worker's memory budget.
        default=1,
        ge=1,
        description="POST /batches bodies received and unpacked at once per process (each up "
        "to BGSVC_BATCH_MAX_BYTES, twice over while unpacked); beyond it, 429 overloaded.",
        json_schema_extra=in_section(JOBS),
    )

    @property
    def effective_batch_max_zip_entries(self) -> int:
        """The cap on a batch zip's entries: a few per image, for the directories and the
        files archivers add (macOS resource forks, dotfiles)."""
        return self.batch_max_zip_entries or 5 * self.batch_max_items


class VideoSettings(BaseModel):
    """Video jobs: their limits, segments and the media child."""

    video_max_duration_s: float = Field(
        default=60.0,
        gt=0,
        description="Longest video a job takes, in seconds, read from the container's "
        "header before any frame is decoded (413 video_too_large).",
        json_schema_extra=in_section(VIDEO),
    )
    video_max_frames: int = Field(
        # 30 s at 30 frames/s. A video is cut into segments of one attempt's work each
        # (BGSVC_VIDEO_SEGMENT_PIXELS), so its length is bounded by credits and patience,
        # not by BGSVC_JOB_TIMEOUT_S.
        default=900,
        ge=1,
        description="Most frames of a video a job takes, from the stream's header (or its "
        "duration times its frame rate), before any frame is decoded (413 video_too_large). "
        "Each frame costs a credit.",
        json_schema_extra=in_section(VIDEO),
    )
    video_max_frame_pixels: int = Field(
        default=1920 * 1080,
        ge=1,
        description="Largest video frame in pixels (width x height from the header; 1080p "
        "by default), 413 video_too_large beyond it.",
        json_schema_extra=in_section(VIDEO),
    )
    video_max_total_pixels: int = Field(
        # 10 s of 1080p at 30 frames/s (22 s of 720p).
        default=300 * 1920 * 1080,
        ge=1,
        description="Most pixels over all of a video's frames (frames x width x height, from "
        "the header), 413 video_too_large beyond it.",
        json_schema_extra=in_section(VIDEO),
    )
    video_segment_pixels: int = Field(
        # 30 frames of 1080p (7 of 4K): a segment is one attempt's work, and each costs a
        # media child's start and a decode from a key frame (about 0.45 s of CPU, measured
        # on 1080p): 13-frame segments of 1080p, sized for the 60 s attempts of the time,
        # spent 92 ms of the child's CPU a frame against 58 with 30 (benchmarks/RESULTS.md).
        # A 1080p frame takes about 1.1 s on a 2-core CPU without AMX, so a segment takes
        # 35 s alone and about 100 s while three nodes share the cores, within the attempt.
        default=30 * 1920 * 1080,
        ge=1,
        description="A video job with more pixels over its frames than this, or more frames "
        "than BGSVC_VIDEO_SEGMENT_FRAMES, is cut into segments of at most this many pixels "
        "and that many frames, each run as a job of its own by whichever node has room, then "
        "stitched into one file; each must finish within BGSVC_JOB_TIMEOUT_S. A segment's "
        "mattes are smoothed from its own first frame on.",
        json_schema_extra=in_section(VIDEO),
    )
    video_segment_frames: int = Field(
        # Every frame costs a forward pass at the model's own input size, however small the
        # frame: by pixels alone, 360 frames of 320x240 were one segment, a job that could
        # only time out on every attempt (and be refunded whole each time).
        default=30,
        ge=1,
        description="Most frames of a video segment (BGSVC_VIDEO_SEGMENT_PIXELS), for videos "
        "whose frames are small: each frame goes through the model at its own input size.",
        json_schema_extra=in_section(VIDEO),
    )
    video_smoothing: bool = Field(
        default=True,
        description="Smooth a video's mattes from frame to frame, where the picture holds "
        "still, so soft edges do not flicker; per job with smooth=true|false. Off, every "
        "frame is matted alone, as a still would be.",
        json_schema_extra=in_section(VIDEO),
    )
    video_step_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Videos are decoded and encoded in a child process; the longest it may "
        "take to open the file or to deliver the next frame. Beyond it the child is killed "
        "and the job fails with 422 video_timeout.",
        json_schema_extra=in_section(VIDEO),
    )
    video_encoder_keep_s: float = Field(
        default=60.0,
        ge=0,
        description="A cut video's segments are decoded each by a child of its own but "
        "encoded by children a worker keeps this long after a segment, for the next one: "
        "a 1080p VP9 encoder with alpha takes about 300 MB, which a fresh child faults in "
        "again. A worker keeps at most two (about 0.4 GB each after 1080p, and never more "
        "than BGSVC_VIDEO_CHILD_MEMORY_BYTES); 0 starts one for every segment.",
        json_schema_extra=in_section(VIDEO),
    )
    video_child_memory_bytes: int = Field(
        # The child's interpreter, numpy and PyAV take ~300 MiB of address space before any
        # frame; a 1080p VP9 encoder and decoder with their frames take a few hundred more.
        default=2 * 1024**3,
        ge=256 * 1024**2,
        description="Address space of the child process that decodes and encodes a video "
        "(RLIMIT_AS); a file that needs more fails with 400 invalid_video. Its CPU time is "
        "held to BGSVC_JOB_TIMEOUT_S (RLIMIT_CPU); a kept encoding child's to that for each "
        "of the 64 segments it encodes before it is replaced.",
        json_schema_extra=in_section(VIDEO),
    )


class StorageSettings(BaseModel):
    """Where job results and inputs are kept, and for how long."""

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the service keeps its own files (SQLite job, key and limit "
        "stores without Redis); results go to <data_dir>/results unless BGSVC_STORAGE_URL "
        "says otherwise.",
        json_schema_extra=in_section(STORAGE),
    )
    storage_url: str = Field(
        default="",
        description="Result store: file:///path (a directory) or s3://bucket/prefix; empty "
        "means file://<data_dir>/results (docs/storage.md).",
        json_schema_extra=in_section(STORAGE),
    )

    @field_validator("storage_url")
    @classmethod
    def _known_storage_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if value and not (sep and scheme in ("file", "s3") and rest.strip("/")):
            raise ValueError(
                f"BGSVC_STORAGE_URL {value!r}: use file:///absolute/path or s3://bucket/prefix"
            )
        return value

    s3_endpoint_url: str = Field(
        default="",
        description="S3 API endpoint for MinIO or another S3-compatible store (e.g. "
        "http://minio:9000); empty means AWS. Credentials and region come from boto3's own "
        "chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ...).",
        json_schema_extra=in_section(STORAGE),
    )
    s3_presign: bool = Field(
        default=False,
        description="Give clients presigned S3 GET URLs for results instead of proxying the "
        "bytes; the endpoint must be reachable by them.",
        json_schema_extra=in_section(STORAGE),
    )
    s3_presign_expires_s: int = Field(
        default=3600,
        ge=1,
        le=7 * 24 * 3600,
        description="Lifetime of a presigned URL (at most 7 days).",
        json_schema_extra=in_section(STORAGE),
    )
    job_ttl_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="Results (and kept originals) older than this are deleted: by a periodic "
        "sweep for file://, by a bucket lifecycle rule for s3:// (docs/storage.md).",
        json_schema_extra=in_section(STORAGE),
    )
    store_originals: bool = Field(
        default=False,
        description="Keep each job's uploaded image next to its result.",
        json_schema_extra=in_section(STORAGE),
    )
