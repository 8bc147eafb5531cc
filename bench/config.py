"""Typed run configuration, presets (``bench/presets/*.toml``) and ``--set`` overrides.

A run's config is resolved once — preset, then overrides — and saved with the run, so every
number can be traced to the settings that made it. Plugin hyper-parameters are small dataclasses
owned by each plugin (``Options``); presets and overrides reach them by plugin name, e.g.
``--set defenses.ppfr_fd.perm_mode=fixed_key`` or ``--set attacks.cgan.epochs=5``.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, get_type_hints

from bench.core.errors import ConfigError

SPLIT_TOLERANCE = 1e-6  # data.split fractions must sum to 1 within this


@dataclass
class DataConfig:
    """Which faces, at what size. ``root`` is required for on-disk datasets (not for ``orl``)."""

    name: str = "orl"
    root: str | None = None
    image_size: int = 64
    channels: int = 1  # 1 = grayscale, 3 = RGB
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)  # train / aux / test identities
    num_pairs: int = 300  # verification pairs drawn from the test split
    limit_identities: int = 0  # 0 = all; >0 keeps the first N identities (tiny test runs)
    verification: list[str] = field(default_factory=list)  # extra .bin files / LFW folders
    workers: int = 2  # DataLoader worker processes decoding a streamed training set
    max_aux_images: int = 0  # streamed sets: cap of the in-memory aux split (whole identities; 0 = all)
    max_test_images: int = 0  # streamed sets: cap of the in-memory test split (0 = all)
    folds: int = 1  # >1: identity-disjoint cross-validation, each identity in `test` once (§12)
    fold: int = 0  # which fold this config's data is (the matrix sets it; 0..folds-1)

    def validate(self) -> None:
        if self.image_size < 16 or self.image_size % 8:
            raise ConfigError(f"data.image_size must be a multiple of 8 and >= 16, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (gray) or 3 (RGB), got {self.channels}")
        if len(self.split) != 3 or min(self.split) <= 0:
            raise ConfigError(f"data.split needs three positive fractions, got {self.split}")
        if abs(sum(self.split) - 1.0) > SPLIT_TOLERANCE:
            terms = " + ".join(f"{f:g}" for f in self.split)
            raise ConfigError(f"data.split fractions must sum to 1, got {sum(self.split):g} ({terms}); "
                              "e.g. --set data.split=[0.5,0.25,0.25]")
        if self.num_pairs < 10:
            raise ConfigError(f"data.num_pairs must be >= 10, got {self.num_pairs}")
        if self.folds < 1:
            raise ConfigError(f"data.folds must be >= 1 (1 = one split), got {self.folds}")
        if not 0 <= self.fold < self.folds:
            raise ConfigError(f"data.fold must lie in 0..{self.folds - 1}, got {self.fold}")
        for name in ("workers", "max_aux_images", "max_test_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0, got {getattr(self, name)}")


PRECISIONS = ("fp32", "bf16")


@dataclass
class RecognizerConfig:
    """Face recognizer and its ArcFace recipe (ALGORITHMS §0.2)."""

    backbone: str = "resnet18"  # ir_se_50 | ir_50 | ir_18 | inception_resnet_v1 | a timm ResNet name
    widths: tuple[int, ...] = (64, 128, 256, 512)
    embedding_dim: int = 512
    dropout: float = 0.4
    arcface_s: float = 64.0
    arcface_m: float = 0.5
    epochs: int = 50
    batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (20, 35, 45)
    warmup_epochs: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast around the backbone; heads and losses in fp32)
    channels_last: bool = False  # NHWC memory format for the backbone (fast on GPUs with tensor cores)
    compile: bool = False  # torch.compile the backbone (--compile)
    # Precise BN: after training, re-estimate every BatchNorm's running mean/var with one pass over
    # the training faces as the recognizer sees them at test time (unflipped; a mixing defense's
    # unmixed representation). Why: running averages lag far behind the weights on short CPU
    # schedules, and test-time inputs (unmixed) differ from training inputs (mixed) for the mixing
    # defenses. False keeps the statistics the training loop left.
    bn_recalibration: bool = True

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"recognizer.precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        for name in ("epochs", "batch_size", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"recognizer.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"recognizer.lr must be > 0, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"recognizer.dropout must be in [0, 1), got {self.dropout}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ConfigError(f"recognizer.widths needs four positive stage widths, got {self.widths}")


@dataclass
class MetricsConfig:
    """LPIPS weights (AlexNet backbone file) and the optional independent evaluator."""

    lpips_weights: str | None = None  # path to alexnet-owt-7be5be79.pth; else the torch hub cache
    evaluator: str = "none"  # "dlib": independent pretrained face embedder (optional extra)

    def validate(self) -> None:
        if self.lpips_weights and not os.path.isfile(self.lpips_weights):
            raise ConfigError(f"metrics.lpips_weights: no file {self.lpips_weights}; give the path of "
                              "the torchvision AlexNet weights (alexnet-owt-7be5be79.pth), or leave "
                              "it unset to use the torch hub cache")


@dataclass
class RunConfig:
    """Everything a run depends on."""

    preset: str = "quick"
    device: str = "auto"  # auto | cpu | cuda
    seeds: tuple[int, ...] = (0,)
    data: DataConfig = field(default_factory=DataConfig)
    recognizer: RecognizerConfig = field(default_factory=RecognizerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)  # plugin base name → options
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed, e.g. --seeds 0,1,2")
        self.data.validate()
        self.recognizer.validate()
        self.metrics.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_value(text: str) -> Any:
    """CLI text → Python value: numbers, booleans, lists/tuples, else the string itself."""
    lowered = text.strip()
    if lowered.lower() in ("true", "false"):
        return lowered.lower() == "true"
    if lowered.lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(lowered)
    except (ValueError, SyntaxError):
        return lowered


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint, converting lists to tuples and ints to floats."""
    origin = getattr(hint, "__origin__", None)
    args = getattr(hint, "__args__", ())
    if hint is Any:
        return value
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            value = (value,)
        elem = args[0] if args else Any
        return tuple(_coerce(v, elem, where) for v in value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = args[0] if args else Any
        return [_coerce(v, elem, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return value
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if args and origin is not None and str(origin) == "typing.Union":
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint in (int, float, bool, str):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def build_options(cls: type, values: dict[str, Any], what: str) -> Any:
    """Instantiate an options dataclass from a dict, with clear errors for unknown names and
    wrongly typed values; calls ``validate()`` when the dataclass defines it."""
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else f"options: {', '.join(names) or 'none'}"
            raise ConfigError(f"{what} has no option {key!r}; {hint}")
        kwargs[key] = _coerce(value, hints[key], f"{what} option {key}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {exc}") from None
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("bench.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return tomllib.loads(resources.files("bench.presets").joinpath(f"{name}.toml").read_text())


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_path(t, "defenses.ppfr_fd.perm_mode", "fixed_key")`` (creating tables as needed)."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"bad option path {dotted!r}; use section.name=value")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"option path {dotted!r} goes through a value, not a table")
    node[keys[-1]] = value


def resolve(preset: str = "quick", overrides: list[str] | None = None,
            extra: dict[str, Any] | None = None) -> RunConfig:
    """Preset → ``extra`` (CLI flags) → ``--set key=value`` overrides → validated RunConfig."""
    tree = load_preset(preset)
    tree["preset"] = preset
    if extra:
        tree = _merge(tree, extra)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set needs key=value, got {item!r}")
        key, text = item.split("=", 1)
        set_path(tree, key.strip(), parse_value(text))
    sections = {"data": DataConfig, "recognizer": RecognizerConfig, "metrics": MetricsConfig}
    top = {k: v for k, v in tree.items() if k not in sections}
    cfg = build_options(RunConfig, top, "config")
    for key, cls in sections.items():
        setattr(cfg, key, build_options(cls, tree.get(key, {}), key))
    cfg.validate()
    return cfg
