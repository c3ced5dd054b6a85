"""Worker configuration: defaults < YAML file < ``VECTORIZE_WORKER_*`` environment.

The YAML file is ``faust.yml`` in the working directory unless a path is given
with ``--config`` (``python -m app``) or ``VECTORIZE_WORKER_CONFIG``. It uses the
sections of the product documentation's ``config/worker.yaml`` (``worker``,
``models``, ``device``, ``processing``) plus ``kafka``, ``stores``, ``web``,
``metrics`` and ``logging``; see :data:`YAML_KEYS` for the full map.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from core.errors import ConfigError
from core.metadata_contract import FieldType, parse_filterable
from core.model_settings import CustomModel, parse_byte_size, parse_custom_models

ENV_PREFIX = "VECTORIZE_WORKER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
DEFAULT_CONFIG_FILE = "faust.yml"


class QdrantSettings(BaseModel):
    """Qdrant: embedded local mode at ``path`` unless ``url`` names a server."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    path: str | None = None  # default: <data_dir>/qdrant
    api_key: SecretStr | None = None
    timeout: float = Field(10.0, gt=0)
    distance: Literal["cosine", "dot", "euclid"] = "cosine"


class ChromaSettings(BaseModel):
    """Chroma: an HTTP server at ``url`` (``chroma run``), else a persistent folder at ``path``."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    path: str | None = None  # default: <data_dir>/chroma
    token: SecretStr | None = None  # sent as "Authorization: Bearer <token>" (Chroma's token auth)
    timeout: float = Field(10.0, gt=0)


class MilvusSettings(BaseModel):
    """Milvus: a server URI (``http://host:19530``) or a Milvus Lite file (default ``<data_dir>/milvus.db``)."""

    model_config = ConfigDict(extra="forbid")
    uri: str | None = None
    token: SecretStr | None = None
    timeout: float = Field(10.0, gt=0)


class WeaviateSettings(BaseModel):
    """Weaviate beyond its URL (``VECTORIZE_WORKER_WEAVIATE_URL``): gRPC port, API key, timeout."""

    model_config = ConfigDict(extra="forbid")
    grpc_port: int = Field(50051, ge=1, le=65535)
    api_key: SecretStr | None = None
    timeout: float = Field(10.0, gt=0)


class Settings(BaseSettings):
    """Every setting of a worker; field names are the env names minus the prefix."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    worker_id: str = Field("worker-1", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    worker_name: str = "Vectorization Worker"
    data_dir: str = "./.state/data"

    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_group_id: str = Field("vectorize-worker", min_length=1)
    tasks_topic: str = "vectorization-tasks"
    status_topic: str = "vectorization-status"
    results_topic: str = "vectorization-results"
    dlq_topic: str = "vectorization-tasks-dlq"
    topic_partitions: int = Field(4, ge=1, le=1024)
    max_task_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # a task's metadata is copied into every one of its vectors: bounded by bytes, keys and depth
    max_metadata_bytes: int = Field(16 * 1024, ge=0, le=16 * 1024 * 1024)
    max_metadata_keys: int = Field(256, ge=0, le=100_000)
    max_metadata_depth: int = Field(8, ge=1, le=64)
    max_title_chars: int = Field(1000, ge=0, le=1_000_000)
    # transport security (README "Security"): every managed Kafka service needs SASL, TLS or both
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None  # CA bundle that signed the brokers' certificates; system CAs when unset
    kafka_ssl_certfile: str | None = None  # client certificate (mTLS)
    kafka_ssl_keyfile: str | None = None  # its private key
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_session_timeout: float = Field(30.0, ge=6, le=300)
    kafka_producer_linger_ms: int = Field(5, ge=0, le=1000)
    task_status_retention_hours: float = Field(24.0, gt=0)
    table_store: Literal["rocksdb", "memory"] = "rocksdb"
    task_status_table: bool = True

    weaviate_url: str = "http://localhost:8080"
    redis_url: str = "redis://localhost:6379/0"  # rediss://… for TLS
    redis_password: SecretStr | None = None  # overrides a password in the URL
    redis_ssl_ca_file: str | None = None  # CA for rediss:// (system CAs when unset)
    heartbeat_interval: float = Field(5.0, gt=0, le=300)

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    gpu_memory_limit: int | None = Field(None, ge=0)  # bytes; "8GiB" accepted; on CUDA the model cache's budget

    models_cache_dir: str = "./.state/models"
    max_loaded_models: int = Field(3, ge=1, le=64)
    default_model: str = Field("sentence-transformers/all-MiniLM-L6-v2", min_length=1)
    models_allow_download: bool = True
    models_allowed: Annotated[list[str], NoDecode] = Field(default_factory=list)
    custom_models: Annotated[list[CustomModel], NoDecode] = Field(default_factory=list)
    models_memory_budget: int | None = Field(None, ge=0)  # bytes of host RAM for loaded models; None = no limit
    models_idle_unload_seconds: float = Field(0, ge=0)  # unload a model unused this long; 0 = never
    # text transformers on the CPU: auto = ONNX Runtime when it exports and matches torch, else torch
    models_backend: Literal["auto", "onnx", "torch"] = "auto"

    # tasks held unfinished (validated, queued, in a model batch, being stored/reported);
    # with 256-text batches and four pipeline stages, 2048 keeps the model busy on one-text tasks
    max_concurrent_tasks: int = Field(2048, ge=1, le=100_000)
    max_inflight_texts: int = Field(4096, ge=1, le=1_000_000)
    max_inflight_bytes: int = Field(256 * 1024 * 1024, ge=1024)  # record bytes held unfinished
    max_batch_tokens: int = Field(16384, ge=16, le=10_000_000)
    task_timeout: float = Field(1800, gt=0)
    default_batch_size: int = Field(32, ge=1, le=4096)
    max_batch_size: int = Field(256, ge=1, le=4096)
    batch_wait_ms: int = Field(20, ge=0, le=60_000)
    shutdown_timeout: float = Field(30.0, ge=0, le=3600)
    include_vectors: bool = False
    long_text: Literal["reject", "truncate"] = "reject"

    default_image_model: str = Field("ViT-B/32", min_length=1)
    images_allowed_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    images_allow_urls: bool = False
    images_allow_private_urls: bool = False
    images_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    images_max_pixels: int = Field(40_000_000, ge=1)
    images_url_timeout: float = Field(10.0, gt=0, le=600)
    images_batch_size: int = Field(16, ge=1, le=1024)

    chunk_tokens: int | None = Field(None, ge=8)
    chunk_overlap_tokens: int = Field(32, ge=0)
    document_vector: Literal["mean", "none"] = "mean"

    vector_dbs: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["qdrant"], min_length=1)
    default_collection: str = Field("vectorize", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    chroma: ChromaSettings = Field(default_factory=ChromaSettings)
    weaviate: WeaviateSettings = Field(default_factory=WeaviateSettings)
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    # one upsert request carries at most this many vectors / bytes (Qdrant refuses requests over 32 MB)
    store_batch_points: int = Field(1000, ge=1, le=100_000)
    store_batch_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)
    replace_stale: bool = Field(
        True,
        description="After writing a task, remove the vectors an earlier version of the same task id left in each "
        "store that this version no longer has (one lookup by task id per batch and store); false skips the lookup",
    )
    # metadata fields stored as native, filterable fields: {collection or "*": {name: type}} (core.metadata_contract)
    filterable: dict[str, dict[str, FieldType]] = Field(default_factory=dict)

    web_host: str = "127.0.0.1"  # 0.0.0.0 only where a network policy or web_auth_token guards the port
    web_port: int = Field(6066, ge=1, le=65535)
    web_auth_token: SecretStr | None = None  # bearer token for every view but /healthz and /readyz
    web_search_enabled: bool = False  # /search/ reads stored text: off unless asked for
    web_access_log: bool = True
    web_advertised_host: str = Field(default_factory=socket.gethostname, min_length=1)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9091, ge=0, le=65535)  # 0 disables the endpoint
    secrets_dir: str | None = None  # a folder of files named like the settings (kafka_sasl_password, …)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("worker_id", mode="before")
    @classmethod
    def _hostname_id(cls, value: Any) -> Any:
        # "@hostname" gives each container of `docker-compose up --scale` its own id
        return socket.gethostname() if value == "@hostname" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("vector_dbs", "images_allowed_roots", "models_allowed", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # "weaviate,qdrant" from the environment as well as a YAML list
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [part.strip() if isinstance(part, str) else part for part in value]
        return value

    @field_validator("filterable", mode="before")
    @classmethod
    def _filterable(cls, value: Any) -> Any:
        return parse_filterable(value)

    @field_validator("custom_models", mode="before")
    @classmethod
    def _custom_models(cls, value: Any) -> Any:
        return parse_custom_models(value)

    @field_validator("models_memory_budget", "gpu_memory_limit", mode="before")
    @classmethod
    def _byte_size(cls, value: Any) -> Any:
        return parse_byte_size(value)

    @field_validator("max_batch_size")
    @classmethod
    def _batch_bounds(cls, value: int, info: Any) -> int:
        default = info.data.get("default_batch_size")
        if default is not None and value < default:
            raise ValueError(f"must be >= default_batch_size ({default})")
        return value

    @field_validator("chunk_overlap_tokens")
    @classmethod
    def _overlap_below_size(cls, value: int, info: Any) -> int:
        size = info.data.get("chunk_tokens")
        if size is not None and value >= size:
            raise ValueError(f"must be smaller than chunk_tokens ({size})")
        return value

    @property
    def qdrant_path(self) -> Path:
        return Path(self.qdrant.path) if self.qdrant.path else Path(self.data_dir) / "qdrant"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _SecretFilesSource(settings_cls), _YamlSource(settings_cls))


#: YAML location (section.key) -> settings field. Top-level keys named like a
#: field are accepted too, so a flat YAML file works as well.
YAML_KEYS: dict[str, str] = {
    "worker.id": "worker_id",
    "worker.name": "worker_name",
    "worker.data_dir": "data_dir",
    "kafka.bootstrap_servers": "kafka_bootstrap_servers",
    "kafka.group_id": "kafka_group_id",
    "kafka.tasks_topic": "tasks_topic",
    "kafka.status_topic": "status_topic",
    "kafka.results_topic": "results_topic",
    "kafka.dlq_topic": "dlq_topic",
    "kafka.topic_partitions": "topic_partitions",
    "kafka.max_task_bytes": "max_task_bytes",
    "kafka.security_protocol": "kafka_security_protocol",
    "kafka.sasl_mechanism": "kafka_sasl_mechanism",
    "kafka.sasl_username": "kafka_sasl_username",
    "kafka.sasl_password": "kafka_sasl_password",
    "kafka.ssl_cafile": "kafka_ssl_cafile",
    "kafka.ssl_certfile": "kafka_ssl_certfile",
    "kafka.ssl_keyfile": "kafka_ssl_keyfile",
    "kafka.ssl_key_password": "kafka_ssl_key_password",
    "kafka.ssl_check_hostname": "kafka_ssl_check_hostname",
    "tasks.max_metadata_bytes": "max_metadata_bytes",
    "tasks.max_metadata_keys": "max_metadata_keys",
    "tasks.max_metadata_depth": "max_metadata_depth",
    "tasks.max_title_chars": "max_title_chars",
    "kafka.session_timeout": "kafka_session_timeout",
    "kafka.producer_linger_ms": "kafka_producer_linger_ms",
    "kafka.task_status_retention_hours": "task_status_retention_hours",
    "kafka.table_store": "table_store",
    "kafka.task_status_table": "task_status_table",
    "models.cache_dir": "models_cache_dir",
    "models.max_loaded": "max_loaded_models",
    "models.default": "default_model",
    "models.allow_download": "models_allow_download",
    "models.allowed": "models_allowed",
    "models.sentence_transformers": "custom_models",
    "models.memory_budget": "models_memory_budget",
    "models.idle_unload_seconds": "models_idle_unload_seconds",
    "models.backend": "models_backend",
    "device.type": "device",
    "device.gpu_memory_limit": "gpu_memory_limit",
    "processing.max_concurrent_tasks": "max_concurrent_tasks",
    "processing.task_timeout": "task_timeout",
    "processing.default_batch_size": "default_batch_size",
    "processing.max_batch_size": "max_batch_size",
    "processing.batch_wait_ms": "batch_wait_ms",
    "processing.max_inflight_texts": "max_inflight_texts",
    "processing.max_batch_tokens": "max_batch_tokens",
    "processing.max_inflight_bytes": "max_inflight_bytes",
    "processing.shutdown_timeout": "shutdown_timeout",
    "processing.include_vectors": "include_vectors",
    "processing.long_text": "long_text",
    "models.default_image": "default_image_model",
    "images.allowed_roots": "images_allowed_roots",
    "images.allow_urls": "images_allow_urls",
    "images.allow_private_urls": "images_allow_private_urls",
    "images.max_bytes": "images_max_bytes",
    "images.max_pixels": "images_max_pixels",
    "images.url_timeout": "images_url_timeout",
    "images.batch_size": "images_batch_size",
    "documents.chunk_tokens": "chunk_tokens",
    "documents.chunk_overlap_tokens": "chunk_overlap_tokens",
    "documents.document_vector": "document_vector",
    "stores.vector_dbs": "vector_dbs",
    "stores.default_collection": "default_collection",
    "stores.qdrant": "qdrant",
    "stores.chroma": "chroma",
    "stores.milvus": "milvus",
    "stores.batch_points": "store_batch_points",
    "stores.batch_bytes": "store_batch_bytes",
    "stores.replace_stale": "replace_stale",
    "stores.filterable": "filterable",
    "stores.weaviate.url": "weaviate_url",
    "stores.weaviate.grpc_port": "weaviate.grpc_port",
    "stores.weaviate.api_key": "weaviate.api_key",
    "stores.weaviate.timeout": "weaviate.timeout",
    "redis.url": "redis_url",
    "redis.password": "redis_password",
    "redis.ssl_ca_file": "redis_ssl_ca_file",
    "redis.heartbeat_interval": "heartbeat_interval",
    "web.host": "web_host",
    "web.port": "web_port",
    "web.advertised_host": "web_advertised_host",
    "web.auth_token": "web_auth_token",
    "web.search_enabled": "web_search_enabled",
    "web.access_log": "web_access_log",
    "metrics.host": "metrics_host",
    "metrics.port": "metrics_port",
    "secrets_dir": "secrets_dir",
    "logging.level": "log_level",
}
_FIELD_TO_YAML = {field: key for key, field in YAML_KEYS.items()}


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The YAML file to read: explicit path, then $VECTORIZE_WORKER_CONFIG, then ./faust.yml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def read_yaml(path: Path) -> dict[str, Any]:
    """Flatten a YAML config file into settings fields; unknown keys are errors."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"Configuration file {path} does not exist; fix --config / {CONFIG_ENV} or create the file."
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read configuration file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Configuration file {path} must hold a mapping of sections, not {type(raw).__name__}.")
    values: dict[str, Any] = {}
    unknown: list[str] = []
    fields = Settings.model_fields
    for key, value in raw.items():
        if isinstance(value, dict) and any(k.startswith(f"{key}.") for k in YAML_KEYS):
            _flatten_section(key, value, values, unknown)
        elif key in fields:
            values[key] = value
        else:
            unknown.append(str(key))
    if unknown:
        known = ", ".join(sorted(YAML_KEYS))
        raise ConfigError(
            f"Invalid configuration file {path}: unknown key(s) {', '.join(sorted(unknown))}. Known keys: {known}."
        )
    return values


def _flatten_section(prefix: str, section: dict[str, Any], out: dict[str, Any], unknown: list[str]) -> None:
    for key, value in section.items():
        dotted = f"{prefix}.{key}"
        if dotted in YAML_KEYS:
            target = YAML_KEYS[dotted]
            if "." in target:  # a field of a nested settings model, e.g. weaviate.grpc_port
                parent, child = target.split(".", 1)
                out.setdefault(parent, {})[child] = value
            else:
                out[target] = value
        elif isinstance(value, dict) and any(k.startswith(f"{dotted}.") for k in YAML_KEYS):
            _flatten_section(dotted, value, out, unknown)
        else:
            unknown.append(dotted)


class _YamlSource(PydanticBaseSettingsSource):
    """Settings source that reads the YAML file chosen by :func:`config_path`."""

    path: Path | None = None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _YamlSource.path or config_path()
        return read_yaml(path) if path is not None else {}


#: settings that hold a secret: never printed; each can also come from a file (README "Security")
SECRET_FIELDS: tuple[tuple[str, ...], ...] = (
    ("kafka_sasl_password",),
    ("kafka_ssl_key_password",),
    ("redis_password",),
    ("web_auth_token",),
    ("weaviate", "api_key"),
    ("qdrant", "api_key"),
    ("chroma", "token"),
    ("milvus", "token"),
)
_SECRET_TOP = {path[0] for path in SECRET_FIELDS if len(path) == 1}


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable of a settings field: ``("weaviate", "api_key")`` -> VECTORIZE_WORKER_WEAVIATE__API_KEY."""
    return ENV_PREFIX + "__".join(path).upper()


class _SecretFilesSource(PydanticBaseSettingsSource):
    """Secrets read from files: ``<env name>_FILE`` names the file, or ``secrets_dir`` holds one named like the
    env name without its prefix, in lower case (``kafka_sasl_password``, ``weaviate__api_key``).

    One trailing newline is dropped. A file that cannot be read is a configuration error naming the variable
    and the path, never the content.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        folder = os.environ.get(env_name(("secrets_dir",)))
        if folder is None:
            path = _YamlSource.path or config_path()
            folder = read_yaml(path).get("secrets_dir") if path is not None else None
        values: dict[str, Any] = {}
        for path in SECRET_FIELDS:
            env = env_name(path)
            file = os.environ.get(env + "_FILE")
            origin = f"{env}_FILE"
            if not file and folder:
                candidate = Path(folder) / env[len(ENV_PREFIX) :].lower()
                file, origin = (str(candidate), f"secrets_dir {folder}") if candidate.is_file() else (None, "")
            if not file:
                continue
            try:
                secret = Path(file).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"Cannot read the secret file {file} ({origin}): {type(exc).__name__}: {getattr(exc, 'strerror', '')}; "
                    "fix the path or the file's permissions."
                ) from None
            target = values
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = secret
        return values


def load_settings(config: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load and validate settings, or raise :class:`ConfigError` naming each bad field."""
    _YamlSource.path = config_path(config)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, _YamlSource.path)) from None
    except SettingsError as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"Invalid configuration: {exc}{cause}. Fix the environment variable or YAML key.") from None
    finally:
        _YamlSource.path = None


def format_validation_error(exc: ValidationError, path: Path | None) -> str:
    """One message listing every bad field with its env name, YAML key and the rule."""
    lines = [f"Invalid configuration ({exc.error_count()} problem(s)); the worker will not start:"]
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        field = loc[0] if loc else "?"
        env = ENV_PREFIX + "__".join(loc).upper()
        yaml_key = _FIELD_TO_YAML.get(field, field)
        if len(loc) > 1:
            yaml_key = ".".join([yaml_key, *loc[1:]])
        got = err.get("input")
        secret = field in _SECRET_TOP or tuple(loc[:2]) in SECRET_FIELDS
        shown = "" if isinstance(got, dict) or secret else f" got {got!r};"
        if err["type"] == "extra_forbidden":
            detail = "unknown setting; check the spelling against the README's configuration table"
        else:
            detail = err["msg"]
        lines.append(f"  - {'.'.join(loc)} (env {env}, YAML {yaml_key}):{shown} {detail}")
    where = f" (YAML file: {path})" if path else ""
    lines.append(f"Fix the values above in the environment or the YAML file{where}.")
    return "\n".join(lines)
