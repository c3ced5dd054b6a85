"""Worker configuration: defaults < YAML file < ``VECTORIZE_WORKER_*`` environment.

The YAML file is ``faust.yml`` in the working directory unless a path is given
with ``--config`` (``python -m app``) or ``VECTORIZE_WORKER_CONFIG``. It uses the
sections of the product documentation's ``config/worker.yaml`` (``worker``,
``models``, ``device``, ``processing``) plus ``kafka``, ``stores``, ``web``,
``metrics`` and ``logging``. Each field names its YAML location (``yaml=``) beside
its default, bounds and description: that one declaration gives the YAML
reader (:data:`YAML_KEYS`), the error messages and the generated
docs/configuration.md. The environment name is the field's name in upper
case after ``VECTORIZE_WORKER_`` (``__`` into a group: ``..._WEAVIATE__API_KEY``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
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
    url: str | None = Field(
        None,
        description="a Qdrant server; none = embedded local mode (one process only: several workers need a server)",
    )
    path: str | None = Field(  # default: <data_dir>/qdrant
        None,
        description="the local mode's folder; none = `<data_dir>/qdrant`",
    )
    api_key: SecretStr | None = Field(None, description="the Qdrant server's API key")
    timeout: float = Field(10.0, gt=0, description="seconds the client waits for the server")
    distance: Literal["cosine", "dot", "euclid"] = Field(
        "cosine",
        description="the distance of the collections the worker creates",
    )


class ChromaSettings(BaseModel):
    """Chroma: an HTTP server at ``url`` (``chroma run``), else a persistent folder at ``path``."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(
        None,
        description="a Chroma server, e.g. `http://127.0.0.1:8000`; none = the embedded persistent client",
    )
    path: str | None = Field(  # default: <data_dir>/chroma
        None,
        description="the embedded client's folder; none = `<data_dir>/chroma`",
    )
    token: SecretStr | None = Field(  # sent as "Authorization: Bearer <token>" (Chroma's token auth)
        None,
        description="sent as `Authorization: Bearer …` to a Chroma server with token auth",
    )
    timeout: float = Field(10.0, gt=0, description="seconds the client waits for the server")


class MilvusSettings(BaseModel):
    """Milvus: a server URI (``http://host:19530``) or a Milvus Lite file (default ``<data_dir>/milvus.db``)."""

    model_config = ConfigDict(extra="forbid")
    uri: str | None = Field(
        None,
        description="a Milvus server (`http://host:19530`) or a Milvus Lite file; none = `<data_dir>/milvus.db`",
    )
    token: SecretStr | None = Field(None, description="the token: `user:password` or an API key")
    timeout: float = Field(10.0, gt=0, description="seconds the client waits for the server")


class WeaviateSettings(BaseModel):
    """Weaviate beyond its URL (``VECTORIZE_WORKER_WEAVIATE_URL``): gRPC port, API key, timeout."""

    model_config = ConfigDict(extra="forbid")
    grpc_port: int = Field(50051, ge=1, le=65535, description="Weaviate's gRPC port, on the host of `weaviate_url`")
    api_key: SecretStr | None = Field(None, description="an API key, when the server wants one")
    timeout: float = Field(10.0, gt=0, description="seconds the client waits for the server")
    vector_index: Literal["hnsw", "flat"] = Field(
        "hnsw",
        description="the vector index of the collections the worker creates: `hnsw` (Weaviate's default) or "
        "`flat` (no graph to build: the cheapest to write, a search reads every vector; for small collections)",
    )
    ef_construction: int | None = Field(
        None,
        ge=4,
        le=4096,
        description="HNSW's candidate list while building (none = Weaviate's default, 128): lower writes faster, "
        "at some recall",
    )
    max_connections: int | None = Field(
        None, ge=4, le=1024, description="HNSW's links per vector (none = Weaviate's default, 32)"
    )
    ef: int | None = Field(
        None,
        ge=-1,
        le=100_000,
        description="HNSW's candidate list while searching (none = Weaviate's default, -1: chosen per query)",
    )

    @model_validator(mode="after")
    def _hnsw_options_need_hnsw(self) -> WeaviateSettings:
        given = [n for n in ("ef_construction", "max_connections", "ef") if getattr(self, n) is not None]
        if self.vector_index != "hnsw" and given:
            raise ValueError(
                f"stores.weaviate.{', stores.weaviate.'.join(given)} tune an HNSW index, but "
                f"stores.weaviate.vector_index is {self.vector_index!r}: drop them or use hnsw"
            )
        return self


def Setting(*args: Any, yaml: str, **kwargs: Any) -> Any:  # noqa: N802 - used like pydantic's Field
    """A settings field: pydantic's ``Field`` plus its YAML location (``section.key``)."""
    return Field(*args, json_schema_extra={"yaml": yaml}, **kwargs)


class Settings(BaseSettings):
    """Every setting of a worker; field names are the env names minus the prefix."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    worker_id: str = Setting(
        "worker-1",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="this worker's id in records, logs and heartbeats; `@hostname` uses the host name (each container"
        " of `docker-compose up --scale` gets its own)",
        yaml="worker.id",
    )
    worker_name: str = Setting(
        "Vectorization Worker",
        description="a display name (the product documentation's `worker.name`); accepted, not used by the worker",
        yaml="worker.name",
    )
    data_dir: str = Setting(
        "./.state/data",
        description="the worker's local state: Faust's tables and data under `<data_dir>/faust/<worker id>`, and the "
        "embedded Qdrant, Chroma and Milvus Lite stores when no server is set",
        yaml="worker.data_dir",
    )

    kafka_bootstrap_servers: str = Setting(
        "localhost:9092", description="the Kafka brokers, comma-separated `host:port`", yaml="kafka.bootstrap_servers"
    )
    kafka_group_id: str = Setting(
        "vectorize-worker",
        min_length=1,
        description="the consumer group (= the Faust app id); workers with the same group share the tasks",
        yaml="kafka.group_id",
    )
    tasks_topic: str = Setting(
        "vectorization-tasks",
        description="the topic tasks are read from; created with `topic_partitions` partitions when missing",
        yaml="kafka.tasks_topic",
    )
    status_topic: str = Setting(
        "vectorization-status",
        description="the topic of status records (received → processing → completed or failed); created when missing",
        yaml="kafka.status_topic",
    )
    results_topic: str = Setting(
        "vectorization-results",
        description="the topic of result records, one per task; created when missing",
        yaml="kafka.results_topic",
    )
    dlq_topic: str = Setting(
        "vectorization-tasks-dlq",
        description="the dead-letter topic (failed tasks with their original payload); created when missing",
        yaml="kafka.dlq_topic",
    )
    migrations_topic: str = Setting(
        "vectorization-migrations",
        description="the compacted topic of model migrations' states (docs/migration.md); every worker reads it "
        "whole before taking tasks; created (1 partition, compacted) when missing",
        yaml="kafka.migrations_topic",
    )
    topic_partitions: int = Setting(
        4,
        ge=1,
        le=1024,
        description="partitions of the topics the worker creates; the most workers that can share the work",
        yaml="kafka.topic_partitions",
    )
    max_task_bytes: int = Setting(
        4 * 1024 * 1024,
        ge=1024,
        description="bytes of one task record; larger payloads are dead-lettered",
        yaml="kafka.max_task_bytes",
    )
    # a task's metadata is copied into every one of its vectors: bounded by bytes, keys and depth
    max_metadata_bytes: int = Setting(
        16 * 1024,
        ge=0,
        le=16 * 1024 * 1024,
        description="bytes of a task's `metadata` as JSON; it is copied into every vector of the task, so a "
        "10,000-text batch stores it 10,000 times",
        yaml="tasks.max_metadata_bytes",
    )
    max_metadata_keys: int = Setting(
        256, ge=0, le=100_000, description="keys at every level of a task's `metadata`", yaml="tasks.max_metadata_keys"
    )
    max_metadata_depth: int = Setting(
        8, ge=1, le=64, description="the nesting depth of a task's `metadata`", yaml="tasks.max_metadata_depth"
    )
    max_title_chars: int = Setting(
        1000,
        ge=0,
        le=1_000_000,
        description="characters of a document's `title` (stored with every chunk)",
        yaml="tasks.max_title_chars",
    )
    # transport security (docs/security.md): every managed Kafka service needs SASL, TLS or both
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Setting(
        "PLAINTEXT",
        description="how the worker talks to Kafka: plain, TLS, SASL, or SASL over TLS (docs/security.md)",
        yaml="kafka.security_protocol",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Setting(
        "PLAIN",
        description="the SASL mechanism",
        yaml="kafka.sasl_mechanism",
    )
    kafka_sasl_username: str | None = Setting(
        None, description="the SASL user (required with `SASL_*`)", yaml="kafka.sasl_username"
    )
    kafka_sasl_password: SecretStr | None = Setting(
        None, description="the SASL password (required with `SASL_*`)", yaml="kafka.sasl_password"
    )
    kafka_ssl_cafile: str | None = Setting(  # CA bundle that signed the brokers' certificates; system CAs when unset
        None,
        description="PEM bundle of the CA(s) that signed the brokers' certificates; the system CAs when unset",
        yaml="kafka.ssl_cafile",
    )
    kafka_ssl_certfile: str | None = Setting(  # client certificate (mTLS)
        None,
        description="the client certificate, for brokers that require client certificates (mTLS)",
        yaml="kafka.ssl_certfile",
    )
    kafka_ssl_keyfile: str | None = Setting(  # its private key
        None,
        description="the client certificate's private key (mTLS)",
        yaml="kafka.ssl_keyfile",
    )
    kafka_ssl_key_password: SecretStr | None = Setting(
        None, description="the password of an encrypted client key", yaml="kafka.ssl_key_password"
    )
    kafka_ssl_check_hostname: bool = Setting(
        True,
        description="check the broker's name against its certificate; turn off only for test set-ups",
        yaml="kafka.ssl_check_hostname",
    )
    kafka_session_timeout: float = Setting(
        30.0,
        ge=6,
        le=300,
        description="seconds before a silent (killed) worker's partitions move to the others",
        yaml="kafka.session_timeout",
    )
    kafka_handover_wait: float = Setting(
        10.0,
        ge=0,
        le=120,
        description="seconds a rebalance waits for this worker's store writes and deletes of the tasks of revoked "
        "partitions to end, so none lands after the new owner's write of a later version of the same id (the "
        "new owner starts once every worker has rejoined); at most half `kafka.session_timeout`",
        yaml="kafka.handover_wait",
    )
    kafka_producer_linger_ms: int = Setting(
        0,
        ge=0,
        le=1000,
        description="milliseconds (whole) the producer waits for more records to put into one produce request; "
        "`0` sends at once (under load records still share requests: one is in flight per broker and the next "
        "takes what queued meanwhile); more trades idle latency for fewer requests (docs/performance.md)",
        yaml="kafka.producer_linger_ms",
    )
    task_status_retention_hours: float = Setting(
        24.0,
        gt=0,
        description="how long a task's status is kept (in Redis, and in the `task-status` table's changelog)",
        yaml="kafka.task_status_retention_hours",
    )
    table_store: Literal["rocksdb", "memory"] = Setting(
        "rocksdb",
        description="where the Faust tables live: `rocksdb` (on disk under `<data_dir>/faust/<worker id>`, memory "
        "stays flat) or `memory` (in the process; grows with the tasks of the retention window)",
        yaml="kafka.table_store",
    )
    status_updates: Literal["all", "terminal"] = Setting(
        "all",
        description="which status records a task gets on `vectorization-status`: `all` = `received`, `processing`, "
        "then `completed` or `failed` (the first two only for a task still unfinished after `status_delay_ms`); "
        "`terminal` = only `completed` or `failed` (two records fewer per task to "
        "send and to read back into the `task-status` table; docs/performance.md)",
        yaml="kafka.status_updates",
    )
    status_delay_ms: int = Setting(
        1000,
        ge=0,
        le=3_600_000,
        description="with `status_updates: all`, `received` and `processing` are sent only for a task still "
        "unfinished this long after it was taken in (then at once, in order); a task done sooner gets only its "
        "final status, as with `terminal`. `0` sends them as they happen (docs/tasks.md)",
        yaml="kafka.status_delay_ms",
    )
    recovery_stall_seconds: float = Setting(
        60.0,
        ge=0,
        le=3600,
        description="a table recovery (after a rebalance; the worker takes no task meanwhile) whose changelog "
        "records left have not gone down for this long is restarted, and after 3 restarts `/healthz` fails so "
        "the worker gets restarted (docs/operations.md); `0` never restarts it",
        yaml="kafka.recovery_stall_seconds",
    )
    task_status_table: bool = Setting(
        False,
        description="also keep Faust's `task-status` table, read back from `vectorization-status` (the "
        "`/tasks/{id}` of workers without `redis.task_status`); off by default: reading every status record "
        "back cost a one-text task 0.6–0.8 ms of the event loop (docs/performance.md)",
        yaml="kafka.task_status_table",
    )
    task_status_redis: bool = Setting(
        True,
        description="write each task's latest status and history to Redis (at `redis.url`, kept "
        "`kafka.task_status_retention_hours`) as the worker sends it: what `/tasks/{id}` answers, on any worker; "
        "best effort (Redis away: statuses queued and retried every second, beyond 20,000 the oldest dropped and "
        "counted; tasks go on); `false` with "
        "`kafka.task_status_table: false`: `/tasks/{id}` answers 404 saying so",
        yaml="redis.task_status",
    )

    weaviate_url: str = Setting(
        "http://localhost:8080", description="Weaviate's HTTP address", yaml="stores.weaviate.url"
    )
    redis_url: str = Setting(  # rediss://… for TLS
        "redis://localhost:6379/0",
        description="the Redis of the heartbeats; `rediss://` for TLS",
        yaml="redis.url",
    )
    redis_password: SecretStr | None = Setting(  # overrides a password in the URL
        None,
        description="the Redis password; wins over one in the URL",
        yaml="redis.password",
    )
    redis_ssl_ca_file: str | None = Setting(  # CA for rediss:// (system CAs when unset)
        None,
        description="the CA of a `rediss://` server; the system CAs when unset",
        yaml="redis.ssl_ca_file",
    )
    heartbeat_interval: float = Setting(
        5.0,
        gt=0,
        le=300,
        description="seconds between heartbeats; the key's TTL is 3 intervals",
        yaml="redis.heartbeat_interval",
    )

    device: Literal["auto", "cpu", "cuda", "mps"] = Setting(
        "auto",
        description="`auto` picks `cuda`, then `mps`, then `cpu`; an explicit `cuda` or `mps` that is absent stops "
        "start-up",
        yaml="device.type",
    )
    gpu_memory_limit: int | None = Setting(  # bytes; "8GiB" accepted; on CUDA the model cache's budget
        None,
        ge=0,
        description="on CUDA, bytes of GPU memory the loaded models may hold (`8GiB` accepted); the model cache "
        "evicts to stay under it (docs/models.md)",
        yaml="device.gpu_memory_limit",
    )

    models_cache_dir: str = Setting(
        "./.state/models",
        description="where named models are looked up (`<dir>/<name>` or `<dir>/<org>__<name>`) and downloaded to. "
        "Not `./models` as in the product documentation's sample: that is this repository's `models/` "
        "package",
        yaml="models.cache_dir",
    )
    max_loaded_models: int = Setting(
        3,
        ge=1,
        le=64,
        description="models kept loaded (LRU): the least recently used model is unloaded first",
        yaml="models.max_loaded",
    )
    default_model: str = Setting(
        "sentence-transformers/all-MiniLM-L6-v2",
        min_length=1,
        description="the model of text tasks without `model_name`; loaded and warmed up at start",
        yaml="models.default",
    )
    models_allow_download: bool = Setting(
        True,
        description="download a model found nowhere locally; `false` (or `HF_HUB_OFFLINE=1`) never touches the network",
        yaml="models.allow_download",
    )
    models_allowed: Annotated[list[str], NoDecode] = Setting(
        default_factory=list,
        description="the model names a task's `model_name` may use besides the configured models (empty: only those):"
        " names or patterns (`sentence-transformers/*`, matched against the name as sent, prefix "
        "included; a pattern never matches a path: a name starting with `/`, `~` or `.` (also after an "
        "`hf:`, `transformers:` or `clip:` prefix, in any case), or with a `..` part, passes only when "
        "listed exactly), comma-separated in the environment; `default_model`, `default_image` and the "
        "custom models are always allowed; any other name fails its task (`model_load`: `… is not among "
        "the models this worker may load (…)`) before the worker looks for it on disk or the hub. `*` "
        "allows any hub-style name (never a path: list a local folder exactly to allow it), which with "
        "downloads on lets any producer make the worker download any hub model",
        yaml="models.allowed",
    )
    custom_models: Annotated[list[CustomModel], NoDecode] = Setting(
        default_factory=list,
        description="custom models of any family: names, or mappings with `name`, `family`, `path`, `pooling`, "
        "`max_length`, `normalize` (a JSON list or comma-separated names in the environment; "
        "docs/models.md)",
        yaml="models.sentence_transformers",
    )
    models_memory_budget: int | None = Setting(  # bytes of host RAM for loaded models; None = no limit
        None,
        ge=0,
        description="bytes of host RAM the loaded models may hold (`4GiB`, `512MiB`, bytes); the least recently used "
        "are unloaded to make room; a larger model fails its tasks; none = no limit",
        yaml="models.memory_budget",
    )
    models_idle_unload_seconds: float = Setting(  # unload a model unused this long; 0 = never
        0,
        ge=0,
        description="unload a model unused this long (not the default model); `0` = never",
        yaml="models.idle_unload_seconds",
    )
    # the engine of the text transformers: auto = the fastest faithful one on this machine (models/engines.py)
    models_backend: Literal["auto", "torch", "torch-bf16", "torch-fp16", "onnx", "onnx-int8", "onnx-int8-static"] = (
        Setting(
            "auto",
            description="what runs the transformer of the sentence-transformers and transformers families: `auto` ="
            " at load, the fastest engine this device supports whose vectors match torch float32's (cosine >= 0.999 on"
            " probe texts; int8 also keeps 99% of top-10 neighbours), measured once per model and machine and cached,"
            " else torch; `torch` = torch float32; `torch-bf16` = bfloat16 weights (a CPU with AMX or AVX-512 BF16, or"
            " CUDA); `torch-fp16` = float16 weights (CUDA); `onnx` = ONNX Runtime float32 (CPU); `onnx-int8` = ONNX"
            " Runtime with int8 weights (CPU); `onnx-int8-static` = ONNX Runtime int8 with activation ranges calibrated"
            " once on fixed texts (CPU). A named engine that cannot run or does not match fails the load; CLIP"
            " always uses torch (docs/models.md)",
            yaml="models.backend",
        )
    )

    # two one-thread calls at once kept both cores computing where one two-thread call waited (docs/performance.md)
    models_parallel_calls: int = Setting(
        0,
        ge=0,
        le=64,
        description="model calls a worker runs at once, torch's threads divided among them: `0` = auto (two on a "
        "CPU with at least two cores, one thread each on two cores; one on a GPU); `1` = one call at a time on all "
        "of torch's threads. A model whose family does not share it between calls (CLIP) runs one "
        "call at a time on all the threads (docs/models.md)",
        yaml="models.parallel_calls",
    )

    # tasks held unfinished (validated, queued, in a model batch, being stored/reported);
    # with 256-text batches and four pipeline stages, 2048 keeps the model busy on one-text tasks
    max_concurrent_tasks: int = Setting(
        2048,
        ge=1,
        le=100_000,
        description="tasks (records) a worker holds unfinished: validated, waiting in the model queue, being "
        "embedded, stored or reported. Intake waits for a free slot (backpressure, docs/performance.md). "
        "It must cover many model calls' worth of your smallest tasks: the model queue sorts what waits "
        "by length, and the product documentation's `5` caps every model call at 5 one-text tasks",
        yaml="processing.max_concurrent_tasks",
    )
    max_inflight_texts: int = Setting(
        4096,
        ge=1,
        le=1_000_000,
        description="texts the unfinished tasks hold (the model queue's depth); intake waits beyond it (a larger task"
        " still goes in alone)",
        yaml="processing.max_inflight_texts",
    )
    max_inflight_bytes: int = Setting(  # record bytes held unfinished
        256 * 1024 * 1024,
        ge=1024,
        description="bytes of the records the unfinished tasks came in; intake waits beyond it (a larger record still"
        " goes in alone)",
        yaml="processing.max_inflight_bytes",
    )
    max_batch_tokens: int = Setting(
        16384,
        ge=16,
        le=10_000_000,
        description="estimated tokens (characters / 4) the gather stage moves at once, and padded tokens (texts × "
        "longest, counted by the model's tokenizer) per model call",
        yaml="processing.max_batch_tokens",
    )
    task_timeout: float = Setting(
        1800,
        gt=0,
        description="seconds; a task that waited longer is failed and dead-lettered",
        yaml="processing.task_timeout",
    )
    default_batch_size: int = Setting(
        32,
        ge=1,
        le=4096,
        description="texts per model call, cut from the model queue by token count (a batch task's `batch_size` "
        "lowers it for its texts; 16 and 64 were slower here)",
        yaml="processing.default_batch_size",
    )
    max_batch_size: int = Setting(
        256,
        ge=1,
        le=4096,
        description="texts the gather stage moves into the model queue at once (and the largest `batch_size` a task "
        "may ask for)",
        yaml="processing.max_batch_size",
    )
    batch_wait_ms: int = Setting(
        20,
        ge=0,
        le=60_000,
        description="while the model computes, how long the gather stage waits for more tasks before moving what it "
        "has into the model queue; an idle model takes what is queued at once",
        yaml="processing.batch_wait_ms",
    )
    shutdown_timeout: float = Setting(
        30.0,
        ge=0,
        le=3600,
        description="on SIGTERM, how long the tasks in the lane may take to finish; of the tasks waiting for the "
        "model, those it cannot do in half this time at its recent speed are left for another worker",
        yaml="processing.shutdown_timeout",
    )
    include_vectors: bool = Setting(
        False, description="put the vectors into result records", yaml="processing.include_vectors"
    )
    long_text: Literal["reject", "truncate"] = Setting(
        "reject",
        description="a text/batch item over the model's token limit: `reject` (the task fails) or `truncate` "
        "(reported in `truncated_items`)",
        yaml="processing.long_text",
    )

    default_image_model: str = Setting(
        "ViT-B/32",
        min_length=1,
        description="the model of image tasks without `model_name`",
        yaml="models.default_image",
    )
    images_allowed_roots: Annotated[list[str], NoDecode] = Setting(
        default_factory=list,
        description="folders local image paths may be read from (comma-separated in the environment); empty refuses "
        "local paths",
        yaml="images.allowed_roots",
    )
    images_allow_urls: bool = Setting(False, description="download `http(s)` image URLs", yaml="images.allow_urls")
    images_allow_private_urls: bool = Setting(
        False,
        description="also loopback, private, link-local and reserved addresses (lets tasks reach the worker's network)",
        yaml="images.allow_private_urls",
    )
    images_max_bytes: int = Setting(
        20 * 1024 * 1024,
        ge=1024,
        description="bytes of one image (file, download or inline)",
        yaml="images.max_bytes",
    )
    images_max_pixels: int = Setting(
        40_000_000, ge=1, description="width × height, read from the header before decoding", yaml="images.max_pixels"
    )
    images_url_timeout: float = Setting(
        10.0,
        gt=0,
        le=600,
        description="seconds per network step of a download (the whole download: twice that)",
        yaml="images.url_timeout",
    )
    images_batch_size: int = Setting(
        16, ge=1, le=1024, description="images gathered across tasks into one model call", yaml="images.batch_size"
    )

    chunk_tokens: int | None = Setting(
        None,
        ge=8,
        description="tokens per document chunk, capped at the model's limit; none = the model's limit",
        yaml="documents.chunk_tokens",
    )
    chunk_overlap_tokens: int = Setting(
        32,
        ge=0,
        description="tokens shared by consecutive chunks; must be smaller than the chunk size",
        yaml="documents.chunk_overlap_tokens",
    )
    document_vector: Literal["mean", "none"] = Setting(
        "mean",
        description="`mean`: also store the mean of a document's chunk vectors; `none`: chunks only",
        yaml="documents.document_vector",
    )

    vector_dbs: Annotated[list[str], NoDecode] = Setting(
        default_factory=lambda: ["qdrant"],
        min_length=1,
        description="the stores every task is written to, in parallel (comma-separated in the environment): "
        "`weaviate`, `qdrant`, `chroma`, `milvus`, or a plug-in's name",
        yaml="stores.vector_dbs",
    )
    collection_aliases: bool = Setting(
        True,
        description="make a new collection behind an alias: its physical collection is named after its model "
        "(`docs__all_minilm_l6_v2_3f2a9c1d`), the alias (Weaviate, Qdrant) or pointer row (Chroma, Milvus) `docs` "
        "names it, and a model migration switches it atomically (docs/migration.md); false: new collections get "
        "the name tasks use, as collections made before aliases",
        yaml="stores.aliases",
    )
    default_collection: str = Setting(
        "vectorize",
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
        description="the collection of tasks without `collection`",
        yaml="stores.default_collection",
    )
    qdrant: QdrantSettings = Setting(
        default_factory=QdrantSettings,
        description="Qdrant's settings (the `QDRANT__*` rows)",
        yaml="stores.qdrant",
    )
    chroma: ChromaSettings = Setting(
        default_factory=ChromaSettings,
        description="Chroma's settings (the `CHROMA__*` rows)",
        yaml="stores.chroma",
    )
    weaviate: WeaviateSettings = Setting(
        default_factory=WeaviateSettings,
        description="Weaviate's settings beyond its URL (the `WEAVIATE__*` rows)",
        yaml="stores.weaviate",
    )
    milvus: MilvusSettings = Setting(
        default_factory=MilvusSettings,
        description="Milvus' settings (the `MILVUS__*` rows)",
        yaml="stores.milvus",
    )
    # one upsert request carries at most this many vectors / bytes (Qdrant refuses requests over 32 MB)
    store_batch_points: int = Setting(
        1000,
        ge=1,
        le=100_000,
        description="the most vectors one upsert request carries; a larger write is sent in several requests, in order",
        yaml="stores.batch_points",
    )
    store_batch_bytes: int = Setting(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="the most (estimated JSON) bytes one upsert request carries (Qdrant refuses requests over 32 MB; "
        "a 10,000-text task is ~83 MB); a larger write is sent in several requests, in order",
        yaml="stores.batch_bytes",
    )
    replace_stale: bool = Setting(
        True,
        description="After writing a task, remove the vectors an earlier version of the same task id left in each "
        "store that this version no longer has (one lookup by task id per batch and store); false skips the lookup",
        yaml="stores.replace_stale",
    )
    skip_unchanged: bool = Setting(
        True,
        description="Before writing a task, read the content digest of its records already in each store (the "
        "lookup `replace_stale` makes) and leave out the records whose vector, text and metadata are unchanged "
        "(a task sent again costs no store write; docs/sync.md); false writes every record",
        yaml="stores.skip_unchanged",
    )
    # metadata fields stored as native, filterable fields: {collection or "*": {name: type}} (core.metadata_contract)
    filterable: dict[str, dict[str, FieldType]] = Setting(
        default_factory=dict,
        description='the metadata fields stored as native, filterable fields, per collection or `"*"`, with their '
        "types (JSON in the environment, merged into the YAML file's entries; docs/stores.md)",
        yaml="stores.filterable",
    )

    web_host: str = Setting(  # 0.0.0.0 only where a network policy or web_auth_token guards the port
        "127.0.0.1",
        description="the address of Faust's web server (dashboard and JSON views); `0.0.0.0` only behind a network "
        "policy and with `web_auth_token` (the compose file sets `0.0.0.0` inside its containers)",
        yaml="web.host",
    )
    web_port: int = Setting(6066, ge=1, le=65535, description="the port of Faust's web server", yaml="web.port")
    web_auth_token: SecretStr | None = Setting(  # bearer token for every view but /healthz and /readyz
        None,
        description="bearer token for every web view but `/healthz`, `/readyz` and the dashboard page "
        "(docs/security.md)",
        yaml="web.auth_token",
    )
    web_search_enabled: bool = Setting(  # /search/ reads stored text: off unless asked for
        False,
        description="serve `/search/`, which returns stored text",
        yaml="web.search_enabled",
    )
    web_access_log: bool = Setting(True, description="one log line per web request", yaml="web.access_log")
    web_advertised_host: str = Setting(
        default_factory=socket.gethostname,
        min_length=1,
        description="how other workers reach this one's web port (its heartbeat's `web_url`)",
        yaml="web.advertised_host",
    )
    metrics_host: str = Setting("127.0.0.1", description="the address of Prometheus `/metrics`", yaml="metrics.host")
    metrics_port: int = Setting(  # 0 disables the endpoint
        9091,
        ge=0,
        le=65535,
        description="the port of Prometheus `/metrics`; `0` turns it off",
        yaml="metrics.port",
    )
    secrets_dir: str | None = Setting(  # a folder of files named like the settings (kafka_sasl_password, …)
        None,
        description="a folder of secret files named like the settings (`kafka_sasl_password`, `weaviate__api_key`; "
        "docs/security.md)",
        yaml="secrets_dir",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Setting(
        "INFO",
        description="the level of the `worker.*` loggers (`python -m app` also passes it to Faust's `-l`)",
        yaml="logging.level",
    )

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

    # -- the embedding cache (YAML section `cache`; docs/embedding-cache.md) ------------------------------
    cache_enabled: bool = Setting(
        True,
        description="look vectors up in the embedding cache (Redis at `redis.url`, and a small in-process LRU) "
        "before the model runs, and write new ones back; a Redis outage only turns the cache off for a while",
        yaml="cache.enabled",
    )
    cache_ttl_seconds: int = Setting(
        7 * 24 * 3600,
        ge=1,
        le=10 * 365 * 24 * 3600,
        description="how long a cached vector lives in Redis (a re-send or replay within it skips the model)",
        yaml="cache.ttl_seconds",
    )
    cache_local_bytes: int = Setting(
        32 * 1024 * 1024,
        ge=0,
        description="bytes of vectors the in-process LRU in front of Redis keeps (`32MiB` accepted); `0` = none",
        yaml="cache.local_bytes",
    )
    cache_max_text_bytes: int = Setting(
        16 * 1024,
        ge=1,
        le=16 * 1024 * 1024,
        description="texts longer than this (UTF-8 bytes) are neither looked up nor cached: long texts rarely repeat",
        yaml="cache.max_text_bytes",
    )
    cache_key_prefix: str = Setting(
        "vw:emb:",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:{}-]+$",
        description="the prefix of the cache's Redis keys (one per deployment sharing a Redis)",
        yaml="cache.key_prefix",
    )
    cache_retry_seconds: float = Setting(
        30.0,
        gt=0,
        le=3600,
        description="after a Redis error or timeout, the cache leaves Redis alone this long (tasks go on without it)",
        yaml="cache.retry_seconds",
    )

    @field_validator("cache_local_bytes", mode="before")
    @classmethod
    def _cache_bytes(cls, value: Any) -> Any:
        return parse_byte_size(value) or 0


def _yaml_keys() -> dict[str, str]:
    """YAML location (``section.key``) -> settings field, read from each field's ``yaml=`` (see :func:`Setting`)."""
    keys: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        key = extra.get("yaml") if isinstance(extra, dict) else None
        if not isinstance(key, str) or key in keys:
            raise AssertionError(f"settings field {name} needs its own yaml= location (core/settings.py)")
        keys[key] = name
    return keys


#: YAML location (section.key) -> settings field, derived from the fields: a group field (e.g. ``weaviate``)
#: takes the keys of its section (``stores.weaviate.grpc_port``). Top-level keys named like a field are
#: accepted too, so a flat YAML file works as well.
YAML_KEYS: dict[str, str] = _yaml_keys()
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
    for key, value in raw.items():
        _place(str(key), value, values, unknown)
    if unknown:
        known = ", ".join(sorted(YAML_KEYS))
        raise ConfigError(
            f"Invalid configuration file {path}: unknown key(s) {', '.join(sorted(unknown))}. Known keys: {known}."
        )
    return values


def _place(dotted: str, value: Any, out: dict[str, Any], unknown: list[str]) -> None:
    """Put the YAML value at ``dotted`` into its settings field (or note the key as unknown)."""
    field = YAML_KEYS.get(dotted)
    if field is not None and isinstance(value, dict) and _is_group(field):
        for key, sub in value.items():  # a group's keys; a key that names a field of its own goes there
            inner = f"{dotted}.{key}"
            if inner in YAML_KEYS:
                _place(inner, sub, out, unknown)
            else:
                out.setdefault(field, {})[key] = sub
    elif field is not None:
        out[field] = value
    elif isinstance(value, dict) and any(k.startswith(f"{dotted}.") for k in YAML_KEYS):
        for key, sub in value.items():
            _place(f"{dotted}.{key}", sub, out, unknown)
    elif "." not in dotted and dotted in Settings.model_fields:  # a flat file: top-level keys named like fields
        out[dotted] = value
    else:
        unknown.append(dotted)


def _is_group(field: str) -> bool:
    annotation = Settings.model_fields[field].annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


class _YamlSource(PydanticBaseSettingsSource):
    """Settings source that reads the YAML file chosen by :func:`config_path`."""

    path: Path | None = None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _YamlSource.path or config_path()
        return read_yaml(path) if path is not None else {}


#: settings that hold a secret: never printed; each can also come from a file (docs/security.md)
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
            detail = "unknown setting; check the spelling against docs/configuration.md"
        else:
            detail = err["msg"]
        lines.append(f"  - {'.'.join(loc)} (env {env}, YAML {yaml_key}):{shown} {detail}")
    where = f" (YAML file: {path})" if path else ""
    lines.append(f"Fix the values above in the environment or the YAML file{where}.")
    return "\n".join(lines)
