"""Settings of the models and the engines that run them, on the CPU and on GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator

from bgsvc.config.sections import CPU_RUNTIME, GPU, MODELS, OptionalDir, in_section

Provider = Literal["auto", "cpu", "cuda"]
EngineName = Literal["auto", "onnxruntime", "openvino"]
Precision = Literal["auto", "f32", "bf16", "f16"]


class CustomModel(BaseModel):
    """A user-supplied ONNX file and the profile it needs (see inference.registry)."""

    path: Path
    profile: str = Field(
        default="isnet",
        description="Built-in profile to preprocess with: imgly, isnet, u2net or birefnet.",
    )
    input_size: int | None = Field(default=None, description="Overrides the profile's input size.")
    output_index: int | None = Field(default=None, description="Overrides the output to read.")


def _default_model_dir() -> Path:
    return Path.home() / ".cache" / "bgsvc" / "models"


class ModelSettings(BaseModel):
    """Which models are served, and the engine and precision they run on."""

    model_dir: Path = Field(
        default_factory=_default_model_dir,
        description="Where fetched models are stored.",
        json_schema_extra=in_section(MODELS),
    )
    default_model: str = Field(
        default="imgly-medium",
        description="Model used when none is asked.",
        json_schema_extra=in_section(MODELS),
    )
    models: list[str] = Field(
        default_factory=list,
        description="Allow-list of models loaded at start and selectable per request; "
        "empty means only the default model, which is always allowed.",
        json_schema_extra=in_section(MODELS),
    )
    custom_models: dict[str, CustomModel] = Field(
        default_factory=dict,
        description='Extra ONNX files: {"name": {"path": "...", "profile": "isnet"}}; '
        "profile is imgly, isnet, u2net or birefnet, and input_size and output_index "
        "override the profile's.",
        json_schema_extra=in_section(MODELS),
    )
    engine: EngineName = Field(
        default="auto",
        description="Inference engine. auto: ONNX Runtime on a CUDA host; on the CPU, OpenVINO "
        "at the fastest precision that passes the quality gate, else ONNX Runtime float32. "
        "onnxruntime or openvino: that engine (OpenVINO runs on the CPU only).",
        json_schema_extra=in_section(MODELS),
    )
    precision: Precision = Field(
        default="auto",
        description="OpenVINO's inference precision. auto: measured on the calibration photos "
        "and gated (IoU >= 0.995, MAE <= 1 level against float32 on every photo); f32, bf16, "
        "f16: that one, ungated.",
        json_schema_extra=in_section(MODELS),
    )
    openvino_cache_dir: OptionalDir = Field(
        default=None,
        description="Where OpenVINO's compiled models and the precision trials are kept "
        "(written on the first start on a machine); unset means <model_dir>/.prepared/openvino. "
        "Point it at a writable volume when the model directory is read-only.",
        json_schema_extra=in_section(MODELS),
    )
    provider: Provider = Field(
        default="auto",
        description="ONNX Runtime provider: auto (CUDA if usable), cuda, cpu.",
        json_schema_extra=in_section(MODELS),
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="Inference threads per process (ORT's intra-op, OpenVINO's); 0 means "
        "the usable cores shared out over the workers (cores // workers, at least 1). A "
        "request alone in its process runs its edge step on as many threads.",
        json_schema_extra=in_section(MODELS),
    )
    inter_op_threads: int = Field(
        default=1, ge=1, description="ORT inter-op threads.", json_schema_extra=in_section(MODELS)
    )
    warmup: bool = Field(
        default=True,
        description="Run one inference before reporting ready.",
        json_schema_extra=in_section(MODELS),
    )

    @model_validator(mode="after")
    def _default_in_allow_list(self) -> Self:
        if not self.models:
            self.models = [self.default_model]
        elif self.default_model not in self.models:
            self.models = [self.default_model, *self.models]
        return self


class CpuRuntimeSettings(BaseModel):
    """How models are prepared on disk and run on the CPU."""

    # Defaults follow benchmarks/RESULTS.md.
    cpu_fp32: bool = Field(
        default=True,
        description="On the CPU provider, run a cached float32 copy of fp16 models "
        "(made once in <model_dir>/.prepared; the fetched file stays as verified).",
        json_schema_extra=in_section(CPU_RUNTIME),
    )
    cpu_int8: bool = Field(
        default=False,
        description="On the CPU provider, run a static int8 (QDQ) copy calibrated on photos "
        "(made once; ~1.5x faster, mattes IoU >= 0.98 vs float32 in benchmarks/RESULTS.md).",
        json_schema_extra=in_section(CPU_RUNTIME),
    )
    int8_calibration_dir: OptionalDir = Field(
        default=None,
        description="Photos to calibrate the int8 copy on; unset means scikit-image's samples.",
        json_schema_extra=in_section(CPU_RUNTIME),
    )
    cache_optimized_model: bool = Field(
        default=True,
        description="Save ORT's fully optimised graph to <model_dir>/.prepared and load it "
        "on later starts (CPU provider).",
        json_schema_extra=in_section(CPU_RUNTIME),
    )
    graph_pipeline: bool = Field(
        default=True,
        description="Run the resize to the model's input, the normalisation, the output "
        "transform and the resize back inside the ONNX graph (a wrapped copy cached in "
        "<model_dir>/.prepared); false: numpy/OpenCV around the bare model.",
        json_schema_extra=in_section(CPU_RUNTIME),
    )
    allow_spinning: bool = Field(
        default=False,
        description="Let ORT worker threads busy-wait between ops (burns idle CPU).",
        json_schema_extra=in_section(CPU_RUNTIME),
    )
    malloc_mmap_threshold_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        le=32 * 1024 * 1024,
        description="glibc malloc: allocations below this come from the heap and are reused, "
        "not mmap()ed and page-faulted in per request. glibc's own adaptive threshold gets "
        "there in most runs but not always (in a fresh node's first requests PNG encode took "
        "24-26 ms instead of 12, benchmarks/RESULTS.md); 0 keeps glibc's defaults.",
        json_schema_extra=in_section(CPU_RUNTIME),
    )
    stage_thread_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="Niceness of the decode/encode threads (e.g. 10), so the forward pass "
        "wins the cores under saturation; 0 leaves them at the process's priority. "
        "No gain measured on 2 cores (benchmarks/RESULTS.md).",
        json_schema_extra=in_section(CPU_RUNTIME),
    )
    warm_stages: bool = Field(
        default=True,
        description="Before /ready: run a made-up photo of up to 2 MP through the stages around "
        "the model once (decode, edge step, compose, encode; 0.5 s on a 2-vCPU VM), so that "
        "the first request does not pay for the process's fresh memory (0.2 s of a 2 MP "
        "photo, benchmarks/RESULTS.md).",
        json_schema_extra=in_section(CPU_RUNTIME),
    )


class GpuSettings(BaseModel):
    """CUDA and TensorRT."""

    cuda_device_id: int = Field(
        default=0,
        ge=0,
        description="CUDA device ordinal (under gunicorn, set per worker from BGSVC_GPU_DEVICES).",
        json_schema_extra=in_section(GPU),
    )
    cuda_cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        default="EXHAUSTIVE",
        description="cuDNN convolution algorithm search.",
        json_schema_extra=in_section(GPU),
    )
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        default="kSameAsRequested",
        description="How the CUDA memory arena grows.",
        json_schema_extra=in_section(GPU),
    )
    cuda_mem_limit_bytes: int = Field(
        default=0,
        ge=0,
        description="CUDA arena limit of one worker in bytes; 0 means no limit. Unset under "
        "gunicorn with several workers on one GPU: 80% of its memory shared out over them. "
        "With the edge step's graphs on the GPU, the model's session gets half and each "
        "graph a quarter (docs/gpu.md).",
        json_schema_extra=in_section(GPU),
    )
    io_binding: bool = Field(
        default=True,
        description="Bind inputs/outputs explicitly on GPU providers.",
        json_schema_extra=in_section(GPU),
    )
    gpu_fp16: bool = Field(
        default=True,
        description="On GPU, run fp16 weights as shipped (CUDA) or build fp16 engines (TensorRT).",
        json_schema_extra=in_section(GPU),
    )
    tensorrt: bool = Field(
        default=False,
        description="Put the TensorRT provider before CUDA (needs onnxruntime-gpu + TensorRT).",
        json_schema_extra=in_section(GPU),
    )
    tensorrt_cache_dir: OptionalDir = Field(
        default=None,
        description="TensorRT engine and timing caches; unset means <model_dir>/.prepared/trt.",
        json_schema_extra=in_section(GPU),
    )
    gpu_devices: str = Field(
        default="",
        description="CUDA ordinals gunicorn's workers spread over (worker slot i gets "
        "device i mod n), e.g. 0,1; empty means every GPU visible (docs/gpu.md).",
        json_schema_extra=in_section(GPU),
    )

    @field_validator("gpu_devices")
    @classmethod
    def _device_list(cls, value: str) -> str:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not all(v.isdigit() for v in items):
            raise ValueError(f"BGSVC_GPU_DEVICES {value!r}: comma-separated CUDA ordinals")
        return ",".join(items)

    cuda_visible_devices: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CUDA_VISIBLE_DEVICES", "cuda_visible_devices"),
        description="CUDA's own device mask; when set, it and not NVML says how many GPUs "
        "the workers can use.",
        json_schema_extra=in_section(GPU),
    )

    @property
    def gpu_device_ids(self) -> tuple[int, ...]:
        """BGSVC_GPU_DEVICES as ordinals; empty means every visible GPU."""
        return tuple(int(v) for v in self.gpu_devices.split(",") if v)
