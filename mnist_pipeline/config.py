"""The pipeline's one typed parameter.

`PipelineConfig` is what the flow takes, what the CLI builds and what the Prefect UI renders as a form.
Every stage receives only its own section; the whole config goes into each W&B run's config.
Defaults are those of W&B's PyTorch tutorial (epochs=5, kernels=[16, 32], batch_size=128, lr=0.005, slice=5).
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefect_wandb import (
    ArtifactsLocationField,
    ConfinementError,
    GatePolicy,
    LineageSettings,
    StoreLocationField,
    StoreURL,
    WandbSettings,
)
from prefect_wandb import allowed_roots as library_allowed_roots
from prefect_wandb import confine as library_confine

DataSource = Literal["download", "local", "synthetic"]

# Defaults shared by the config and the pure code that has them as keyword defaults: one source each.
INFERENCE_BATCH = 256  # evaluation and ONNX validation (1024 holds ~150 MiB more for no speed on CPU)
THROUGHPUT_BATCH = 256
LATENCY_SAMPLES = 200
TIMING_SECONDS = 0.15  # minimum seconds each throughput figure is timed for
SCHEDULE_CRON, SCHEDULE_TIMEZONE = "0 3 * * 1", "UTC"  # scheduled retraining: Mondays 03:00 UTC

MODEL_NAME = "convnet"  # the model's artifact name (its ONNX export: convnet-onnx)
DATASET_NAME = "mnist"  # the dataset's artifact name

# What each run records of the code that made it: this repository's git state and these distributions' versions.
SOURCE_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mnist-lineage-pipeline", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxscript",
            "wandb", "prefect", "pydantic")

# The operator's roots (os.pathsep-separated), set in the environment of the process that runs the flow, never
# in a parameter: when set, every path of a PipelineConfig must resolve (symlinks followed) inside one of them.
ALLOWED_ROOTS_ENV = "MNIST_PIPELINE_ALLOWED_ROOTS"


class ConfigError(ValueError):
    """A config that is well-formed but not allowed here (a path outside the allowed roots); names the field."""



def allowed_roots() -> list[Path] | None:
    return library_allowed_roots(ALLOWED_ROOTS_ENV)


def confine(name: str, path: Path, roots: list[Path] | None = None, why: str = f"${ALLOWED_ROOTS_ENV}") -> None:
    """Refuse `path` (after '..' and symlinks) outside every root: `roots`, else $MNIST_PIPELINE_ALLOWED_ROOTS when
    set (nothing is refused when neither is); `name` is what the error calls it, `why` where the roots come from."""
    try:
        library_confine(name, path, roots if roots is not None else allowed_roots(), why)
    except ConfinementError as e:
        raise ConfigError(str(e)) from None


def bounds(field) -> str:
    """A field's numeric and length limits in words ('1 to 1000', 'more than 0, at most 10', 'exactly 2 items'),
    read from the constraints pydantic checks, so the text cannot disagree with the check; '' when it has none."""
    c: dict[str, float] = {}
    for m in field.metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(m, attr, None) is not None:
                c[attr] = getattr(m, attr)

    def num(v) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    parts = []
    if "ge" in c and "le" in c:
        parts.append(f"{num(c['ge'])} to {num(c['le'])}")
    else:
        parts += [f"{w} {num(c[k])}" for k, w in (("ge", "at least"), ("gt", "more than"), ("le", "at most"),
                                                   ("lt", "less than")) if k in c]
    lo, hi = c.get("min_length"), c.get("max_length")
    text = field.annotation is str or str in typing.get_args(field.annotation)  # `str | None` is text too
    unit = "characters" if text else "items"
    if lo is not None and lo == hi:
        parts.append(f"exactly {lo} {unit}")
    elif lo is not None or hi is not None:
        parts.append(f"{lo} to {hi} {unit}" if lo is not None and hi is not None else
                     f"at least {lo} {unit}" if lo is not None else f"at most {hi} {unit}")
    return ", ".join(parts)


class _Section(BaseModel):
    # Unknown keys are a typo in a payload or config file: reject them instead of silently ignoring them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        """Each field's limits go into its description ("... (allowed: 1 to 1000)"): the Prefect UI's form and
        `--help` show descriptions, not the schema's minimum and maximum."""
        super().__pydantic_init_subclass__(**kwargs)
        changed = False
        for field in cls.model_fields.values():
            limits = bounds(field)
            if limits and field.description and "(allowed:" not in field.description:
                field.description = f"{field.description} (allowed: {limits})"
                changed = True
        if changed:
            cls.model_rebuild(force=True)


class DataConfig(_Section):
    model_config = ConfigDict(title="Data")  # the section's heading in the Prefect form

    source: DataSource = Field(
        "download",
        description="Where MNIST comes from: 'download' (torchvision's real download into root), "
        "'local' (a directory of IDX files, .gz or not) or 'synthetic' (deterministic digits, offline demos).",
    )
    root: Path = Field(Path("data"), description="Directory torchvision downloads into (it writes ROOT/MNIST/raw).")
    local_dir: Path | None = Field(
        None, description="For source='local': directory holding the four MNIST IDX files (directly or in its MNIST/raw)."
    )
    mirrors: list[str] | None = Field(
        None,
        description="For source='download': mirror URLs to try in order, replacing torchvision's MNIST.mirrors.",
    )
    slice: int = Field(5, ge=1, le=10_000, description="Keep every n-th image of each split (the tutorial's slice=5).")
    timeout: float = Field(
        30, gt=0, le=3600, description="For source='download': seconds a mirror may take to connect or to send "
        "its next bytes; then the next mirror is tried.")
    retries: int = Field(2, ge=0, le=20, description="Retries of prepare-data after a network error (not after "
                         "bad data, a wrong md5 or a full disk, which would fail the same way).")
    retry_delay: float = Field(5, ge=0, le=3600, description="Seconds between those retries.")
    task_timeout: float = Field(
        3600, gt=0, le=86_400, description="Seconds prepare-data may take in all before Prefect stops it (a last "
        "guard; each network read is bounded by timeout).")
    synthetic_train: int = Field(6000, ge=10, le=200_000, description="Training images for source='synthetic'.")
    synthetic_test: int = Field(1000, ge=10, le=100_000, description="Test images for source='synthetic'.")

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source == "local":
            if self.local_dir is None:
                raise ValueError("data.source='local' needs data.local_dir (a directory holding MNIST IDX files)")
            if not self.local_dir.is_dir():
                raise ValueError(f"data.local_dir {str(self.local_dir)!r} is not a readable directory")
            if not os.access(self.local_dir, os.R_OK | os.X_OK):
                raise ValueError(f"data.local_dir {str(self.local_dir)!r} is not readable")
        if self.mirrors is not None and not self.mirrors:
            raise ValueError("data.mirrors, when given, must list at least one URL")
        for url in self.mirrors or ():
            parts = urlparse(url)
            if parts.scheme not in ("http", "https", "file"):
                raise ValueError(f"data.mirrors: {url!r} is not an http://, https:// or file:// URL")
            if parts.username or parts.password:
                # A parameter is stored in Prefect, W&B run configs and the lineage store: no secrets in it.
                raise ValueError(f"data.mirrors: {parts.scheme}://{parts.hostname}/...: credentials in a mirror "
                                 "URL would be recorded with the run; give the mirror without them")
        return self


class TrainConfig(_Section):
    model_config = ConfigDict(title="Training")  # the section's heading in the Prefect form

    epochs: int = Field(5, ge=1, le=1000, description="Passes over the training split.")
    classes: int = Field(10, ge=2, le=10, description="Output classes of the ConvNet (MNIST has 10).")
    kernels: list[int] = Field(
        [16, 32], min_length=2, max_length=2, description="Output channels of the two conv layers."
    )
    batch_size: int = Field(128, ge=1, le=65_536, description="Training batch size.")
    learning_rate: float = Field(0.005, gt=0, le=10, description="Adam learning rate.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for weight init and shuffling.")
    log_every: int = Field(25, ge=1, description="Log the loss every n batches, with step = examples seen.")
    watch: bool = Field(True, description="Call wandb.watch on the model (gradients and parameters).")
    watch_log_freq: int = Field(10, ge=1, description="wandb.watch log_freq, in batches.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when present.")
    threads: int = Field(0, ge=0, le=512, description="Intra-op CPU threads; 0 means one per core.")
    channels_last: bool = Field(True, description="Train in the NHWC memory layout (faster convolutions on CPU).")
    checkpoint_every: int = Field(
        100, ge=1, le=1_000_000,
        description="Write a resumable checkpoint every n batches (and at every epoch's end).",
    )

    @field_validator("kernels")
    @classmethod
    def _positive_kernels(cls, v: list[int]) -> list[int]:
        if any(k <= 0 for k in v):
            raise ValueError(f"every kernel count must be positive, got {v}")
        return v


class EvalConfig(_Section):
    model_config = ConfigDict(title="Evaluation")  # the section's heading in the Prefect form

    misclassified_table_rows: int = Field(
        64, ge=0, le=10_000, description="Misclassified test images logged to W&B (as images, kept offline too) "
        "and shown in the run report.")
    batch_size: int = Field(
        INFERENCE_BATCH, ge=1, le=65_536, description="Inference batch size of evaluation and ONNX validation (larger batches "
        "hold more memory for little speed on CPU).")


class OnnxConfig(_Section):
    model_config = ConfigDict(title="ONNX export")  # the section's heading in the Prefect form

    opset: int = Field(18, ge=13, le=23, description="ONNX opset version.")
    exporter: Literal["torchscript", "dynamo"] = Field(
        "torchscript", description="torch.onnx exporter: 'torchscript' (the tracer: 0.1 s here; deprecated by PyTorch "
        "and kept while torch<2.15 is pinned) or 'dynamo' (torch.export based, PyTorch's new default: about 1.5 s "
        "and 50 MiB more per run). Every export is checked against torch by onnxruntime either way.")
    parity_atol: float = Field(1e-3, gt=0, description="Largest allowed |torch logit - onnxruntime logit|.")
    min_argmax_agreement: float = Field(
        0.999, ge=0, le=1, description="Smallest allowed share of test images with the same predicted class."
    )
    latency_samples: int = Field(LATENCY_SAMPLES, ge=10, le=100_000, description="Batch-1 runs timed for p50/p99 latency.")
    throughput_batch: int = Field(THROUGHPUT_BATCH, ge=1, le=65_536, description="Batch size of the throughput measurement.")
    timing_seconds: float = Field(TIMING_SECONDS, gt=0, le=60, description="Minimum seconds each throughput is timed for.")


class WandbConfig(WandbSettings, _Section):
    """The library's W&B settings, with this pipeline's project."""

    model_config = ConfigDict(title="Weights & Biases")  # the section's heading in the Prefect form

    project: str = Field("mnist-lineage", min_length=1, max_length=128,  # W&B's limit (WandbSettings checks it)
                         description="W&B project (at most 128 characters, none of / \\ # ? % :).")


class PromotionConfig(_Section):
    model_config = ConfigDict(title="Promotion")  # the section's heading in the Prefect form

    margin: float = Field(
        0.0, ge=0, le=1,
        description="A new model becomes 'production' only if its test accuracy is at least production's plus this.",
    )
    registry_path: str | None = Field(
        None, description="Online only: also link a promoted model into this W&B registry collection, "
        "e.g. 'wandb-registry-model/mnist-convnet'.",
    )
    require_signature: bool = Field(
        False, description="Promote only a model whose ONNX file has a verified attestation from this run's sign "
        "stage (needs a signing key: sign.private_key or $MNIST_PIPELINE_SIGN_KEY).",
    )


SIGN_KEY_ENV = "MNIST_PIPELINE_SIGN_KEY"  # a deployment's signing key, set in the environment of its worker


class SignConfig(_Section):
    model_config = ConfigDict(title="Signing")  # the section's heading in the Prefect form

    private_key: Path | None = Field(
        None, description="EC private key (PEM, from `mnist-pipeline keygen`) to sign the validated ONNX file and "
        f"its provenance with; default ${SIGN_KEY_ENV}, else no signing. Only the path is recorded, never the key.")


class PipelineConfig(_Section):
    # a refused value is not echoed in pydantic's message (a store URL's password would be)
    model_config = ConfigDict(hide_input_in_errors=True)

    force: bool = Field(
        False, description="Retrain even when the data and training config are those of the production model.",
    )
    dataset: Literal["MNIST"] = Field("MNIST", description="Dataset name (recorded in W&B, as in the tutorial).")
    architecture: Literal["CNN"] = Field("CNN", description="Model architecture (recorded in W&B).")
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    onnx: OnnxConfig = Field(default_factory=OnnxConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    sign: SignConfig = Field(default_factory=SignConfig)
    artifacts_dir: ArtifactsLocationField = Field(
        Path("mnist-runs/artifacts"), description="Where artifact files are stored: a folder, or s3://bucket/prefix "
        "(keys and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL; a local cache holds "
        "staging and checkpoints).")
    lineage_db: StoreLocationField = Field(
        Path("mnist-runs/lineage.db"), description="Lineage store: an SQLite file, or a PostgreSQL URL "
        "postgresql+psycopg://user@host:port/db (its password from PGPASSWORD or ~/.pgpass; one in the URL is "
        "masked wherever it is shown and never recorded).")

    def resolved(self) -> PipelineConfig:
        """The same config with every path made absolute, so tasks agree whatever their working directory.

        Raises ConfigError when $MNIST_PIPELINE_ALLOWED_ROOTS is set and a path resolves outside every root.
        """
        data = self.data.model_copy(
            update={
                "root": self.data.root.expanduser().resolve(),
                "local_dir": self.data.local_dir.expanduser().resolve() if self.data.local_dir else None,
            }
        )
        out = self.model_copy(
            update={
                "data": data,
                "artifacts_dir": self.artifacts_dir.expanduser().resolve() if isinstance(self.artifacts_dir, Path)
                else self.artifacts_dir,
                "lineage_db": self.lineage_db if isinstance(self.lineage_db, StoreURL)
                else self.lineage_db.expanduser().resolve(),
                "wandb": self.wandb.model_copy(
                    update={"dir": self.wandb.dir.expanduser().resolve() if self.wandb.dir else None}
                ),
                "sign": self.sign.model_copy(
                    update={"private_key": self.sign.private_key.expanduser().resolve()
                            if self.sign.private_key else None}
                ),
            }
        )
        out.check_roots()
        if out.promotion.require_signature and out.signing_key() is None:
            raise ConfigError(f"promotion.require_signature is set but there is no signing key (give --sign-key, "
                              f"sign.private_key or ${SIGN_KEY_ENV}): no model could be promoted")
        return out

    def signing_key(self) -> Path | None:
        """The key this run signs with: `sign.private_key`, else $MNIST_PIPELINE_SIGN_KEY, else None (unsigned)."""
        if self.sign.private_key is not None:
            return self.sign.private_key
        env = os.environ.get(SIGN_KEY_ENV, "").strip()
        return Path(env).expanduser().resolve() if env else None

    def paths(self) -> dict[str, Path]:
        """Every path field, by its dotted name (the signing key given as a parameter or --sign-key included: a
        caller of the Prefect API must not sign with any key the worker can read; $MNIST_PIPELINE_SIGN_KEY is the
        worker's own setting); W&B's folder as wandb will take it (wandb.dir, else $WANDB_DIR from this process's
        environment, else beside the store), so the roots confine it whichever way it is set."""
        env_dir = os.environ.get("WANDB_DIR")
        fields = {"data.root": self.data.root, "data.local_dir": self.data.local_dir,
                  "artifacts_dir": self.artifacts_folder(), "wandb.dir": self.wandb.dir,
                  "sign.private_key": self.sign.private_key}
        if isinstance(self.lineage_db, Path):  # a store in a database is no path to confine
            fields["lineage_db"] = self.lineage_db
        if self.wandb.dir is None and env_dir:
            fields["$WANDB_DIR (wandb.dir unset)"] = Path(env_dir)
        return {k: v for k, v in fields.items() if v is not None}

    def check_roots(self, roots: list[Path] | None = None, why: str = f"${ALLOWED_ROOTS_ENV}") -> None:
        """Refuse a path of `paths()` outside every root (`confine`)."""
        for name, path in self.paths().items():
            confine(name, path, roots, why)

    def training_fingerprint(self) -> dict:
        """What decides the trained weights: equal fingerprints on equal data mean retraining changes nothing
        (device, threads, logging and memory layout do not count)."""
        t = self.train
        return {"epochs": t.epochs, "classes": t.classes, "kernels": list(t.kernels), "batch_size": t.batch_size,
                "learning_rate": t.learning_rate, "seed": t.seed, "slice": self.data.slice}

    def artifacts_folder(self) -> Path:
        """The local folder the stages write in: `artifacts_dir`, or for an S3 location its cache on this host
        (staging and training checkpoints included)."""
        return self.lineage().local_artifacts()

    def lineage(self) -> LineageSettings:
        """Where this run's lineage goes, in the library's terms: this repository's code and these packages on
        record."""
        return LineageSettings(store=self.lineage_db, artifacts=self.artifacts_dir, wandb=self.wandb,
                               code_root=SOURCE_ROOT, packages=PACKAGES, command="mnist-pipeline")

    def gate(self) -> GatePolicy:
        """The promotion gate of this pipeline: test accuracy, higher is better, by `promotion.margin`."""
        return GatePolicy(metric="test_accuracy", label="accuracy", margin=self.promotion.margin)

    def flat(self) -> dict:
        """The tutorial-shaped view for W&B run configs: hyperparameters at the top, sections nested."""
        return {
            "epochs": self.train.epochs,
            "classes": self.train.classes,
            "kernels": list(self.train.kernels),
            "batch_size": self.train.batch_size,
            "learning_rate": self.train.learning_rate,
            "dataset": self.dataset,
            "architecture": self.architecture,
            "slice": self.data.slice,
            "seed": self.train.seed,
            "pipeline": self.model_dump(mode="json"),
        }
