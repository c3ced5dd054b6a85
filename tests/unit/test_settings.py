from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import app as app_package
from app import doctor
from app.__main__ import main as python_m_app
from core.errors import ConfigError
from core.settings import load_settings
from tests.unit.built import build_worker
from tests.unit.conftest import write_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_documented_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.chdir(tmp_path)  # no faust.yml here
    s = load_settings()
    assert s.worker_id == "worker-1"
    assert s.kafka_bootstrap_servers == "localhost:9092"
    assert s.weaviate_url == "http://localhost:8080"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.device == "auto"
    assert (s.max_concurrent_tasks, s.max_loaded_models) == (2048, 3)
    assert (s.max_inflight_texts, s.max_batch_tokens) == (4096, 16384)
    assert s.default_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert s.task_timeout == 1800
    assert s.vector_dbs == ["qdrant"]
    assert s.table_store == "rocksdb" and s.task_status_table is False and s.task_status_redis is True
    assert s.models_backend == "auto"
    assert s.kafka_producer_linger_ms == 0


def test_yaml_overrides_defaults_and_env_overrides_yaml(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "worker: {id: yaml-worker}\nmodels: {max_loaded: 2}\nprocessing: {max_batch_size: 64}\n"
    )
    s = load_settings(path)
    assert (s.worker_id, s.max_loaded_models, s.max_batch_size) == ("yaml-worker", 2, 64)
    clean_env.setenv("VECTORIZE_WORKER_WORKER_ID", "env-worker")
    clean_env.setenv("VECTORIZE_WORKER_MAX_LOADED_MODELS", "7")
    s = load_settings(path)
    assert (s.worker_id, s.max_loaded_models, s.max_batch_size) == ("env-worker", 7, 64)


def test_config_path_from_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("VECTORIZE_WORKER_CONFIG", str(write_yaml(tmp_path, "device: {type: cpu}\n")))
    assert load_settings().device == "cpu"


def test_seed_worker_yaml_and_faust_yml_load(clean_env: pytest.MonkeyPatch) -> None:
    seed = load_settings(ROOT / "config" / "worker.yaml")
    assert (seed.worker_name, seed.models_cache_dir, seed.gpu_memory_limit) == (
        "Vectorization Worker",
        "./models",
        None,
    )
    full = load_settings(ROOT / "faust.yml")
    assert full.tasks_topic == "vectorization-tasks" and full.web_port == 6066 and full.metrics_port == 9091


def test_lists_from_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.chdir(tmp_path)
    clean_env.setenv("VECTORIZE_WORKER_VECTOR_DBS", "qdrant, weaviate")
    clean_env.setenv("VECTORIZE_WORKER_QDRANT__URL", "http://qdrant:6333")
    s = load_settings()
    assert s.vector_dbs == ["qdrant", "weaviate"]
    assert s.qdrant.url == "http://qdrant:6333"


def test_every_bad_field_is_named_with_accepted_values(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "processing: {max_concurrent_tasks: 0}\n")
    clean_env.setenv("VECTORIZE_WORKER_DEVICE", "gpu")
    clean_env.setenv("VECTORIZE_WORKER_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert (
        "device (env VECTORIZE_WORKER_DEVICE, YAML device.type): got 'gpu'; Input should be 'auto', 'cpu', 'cuda' or 'mps'"
        in message
    )
    assert (
        "max_concurrent_tasks (env VECTORIZE_WORKER_MAX_CONCURRENT_TASKS, YAML processing.max_concurrent_tasks): got 0"
        in message
    )
    assert "log_level" in message and "'DEBUG', 'INFO'" in message


def test_unknown_yaml_keys_are_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "models: {max_loded: 2}\nsurprise: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) models.max_loded, surprise"):
        load_settings(path)


def test_missing_and_broken_yaml(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="Cannot read configuration file"):
        load_settings(write_yaml(tmp_path, "worker: [unclosed\n"))


def test_invalid_config_stops_startup_with_one_message(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m app worker`` (and ``faust -A app``, through ``app.app``) builds the worker: an invalid setting
    exits 2 with one message and no traceback (SystemExit(2) is exactly that for the interpreter)."""
    clean_env.setattr(app_package, "_worker", None)  # this process has built none yet, as a fresh one
    clean_env.setenv("VECTORIZE_WORKER_DEVICE", "gpu")
    clean_env.setenv("VECTORIZE_WORKER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as stopped:
        python_m_app(["worker"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("vectorize-worker: Invalid configuration (1 problem(s))"), err
    assert "VECTORIZE_WORKER_DEVICE" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as again:
        app_package.app  # noqa: B018 - what `faust -A app` looks up
    assert again.value.code == 2 and "VECTORIZE_WORKER_DEVICE" in capsys.readouterr().err
    assert app_package._worker is None and not (tmp_path / "data").exists()


def test_the_doctor_script_reports_what_would_stop_the_worker(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kafka security settings that do not fit stop the worker's app from being built (exit 2); the doctor script
    builds no app, so it reports them as its kafka check's failure, with the rest of its report."""
    spec = importlib.util.spec_from_file_location("doctor_script", ROOT / "scripts" / "test_worker.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # its imports: app.doctor and core only, nothing built
    clean_env.setenv("VECTORIZE_WORKER_DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")  # without a user or password
    clean_env.setattr(sys, "argv", ["scripts/test_worker.py"])
    clean_env.setattr(doctor, "check_stores", lambda settings: "fake store answers")  # no store or model here
    clean_env.setattr(doctor, "check_model", lambda settings: "fake model loaded")
    assert script.main() == 1
    out = capsys.readouterr().out
    assert "[FAIL] kafka" in out and "Invalid Kafka security settings" in out, out
    assert "[PASS] vector store" in out and "result: FAILED: kafka" in out
    with pytest.raises(SystemExit) as stopped:  # what the worker itself does with the same settings
        build_worker(clean_env, tmp_path)
    assert stopped.value.code == 2 and "Invalid Kafka security settings" in capsys.readouterr().err


def test_hostname_worker_id(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import socket

    clean_env.chdir(tmp_path)
    clean_env.setenv("VECTORIZE_WORKER_WORKER_ID", "@hostname")
    assert load_settings().worker_id == socket.gethostname()


def test_nested_store_settings_from_yaml_and_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "stores: {weaviate: {url: 'http://wv:8080', grpc_port: 50052}, chroma: {url: 'http://c:8000'}}\n"
    )
    s = load_settings(path)
    assert (s.weaviate_url, s.weaviate.grpc_port, s.chroma.url) == ("http://wv:8080", 50052, "http://c:8000")
    clean_env.setenv("VECTORIZE_WORKER_WEAVIATE__GRPC_PORT", "50053")
    assert load_settings(path).weaviate.grpc_port == 50053


def test_weaviate_index_options_from_yaml_and_env_and_hnsw_options_refused_for_flat(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sinks.weaviate import create

    defaults = load_settings().weaviate
    assert (defaults.vector_index, defaults.ef_construction, defaults.max_connections, defaults.ef) == (
        "hnsw",
        None,
        None,
        None,
    )
    path = write_yaml(tmp_path, "stores: {weaviate: {ef_construction: 64, max_connections: 16}}\n")
    clean_env.setenv("VECTORIZE_WORKER_WEAVIATE__EF", "80")
    s = load_settings(path)
    assert (s.weaviate.ef_construction, s.weaviate.max_connections, s.weaviate.ef) == (64, 16, 80)
    store = create(s)  # no connection until the first call
    assert (store._vector_index, store._hnsw) == ("hnsw", {"ef_construction": 64, "max_connections": 16, "ef": 80})
    clean_env.setenv("VECTORIZE_WORKER_WEAVIATE__VECTOR_INDEX", "flat")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert (
        "stores.weaviate.ef_construction, stores.weaviate.max_connections, stores.weaviate.ef tune an HNSW" in message
    )
    assert "vector_index is 'flat'" in message
    clean_env.delenv("VECTORIZE_WORKER_WEAVIATE__EF")
    assert create(load_settings())._vector_index == "flat"
    clean_env.setenv("VECTORIZE_WORKER_WEAVIATE__EF_CONSTRUCTION", "2")
    with pytest.raises(ConfigError, match="ef_construction"):
        load_settings()


def test_table_store_from_yaml_and_a_clear_error_for_an_unknown_one(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load_settings(write_yaml(tmp_path, "kafka: {table_store: memory}\n")).table_store == "memory"
    clean_env.setenv("VECTORIZE_WORKER_TABLE_STORE", "redis")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "table_store" in str(err.value) and "rocksdb" in str(err.value)


def test_models_backend_from_yaml_and_env_and_a_clear_error_for_an_unknown_one(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path, "models: {backend: torch}\n")
    assert load_settings(path).models_backend == "torch"
    clean_env.setenv("VECTORIZE_WORKER_MODELS_BACKEND", "onnx")
    assert load_settings(path).models_backend == "onnx"
    clean_env.setenv("VECTORIZE_WORKER_MODELS_BACKEND", "tensorrt")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert "models_backend" in message and all(v in message for v in ("'auto'", "'onnx'", "'torch'"))


@pytest.mark.parametrize(("value", "registered"), [("true", True), ("false", False)])
def test_task_status_table_switch_registers_the_tracker_or_not(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, value: str, registered: bool
) -> None:
    """The switch decides whether the agent that reads the status topic back exists at all."""
    worker, _ = build_worker(clean_env, tmp_path, task_status_table=value)
    agents = sorted(worker.app.agents)
    assert "intake" in agents and "worker-stats-tracker" in agents
    assert ("task-status-tracker" in agents) is registered, agents


@pytest.mark.parametrize(("value", "seconds"), [(None, 0.0), ("5", 0.005), ("20", 0.02)])
def test_producer_linger_reaches_fausts_producer(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, value: str | None, seconds: float
) -> None:
    """kafka.producer_linger_ms becomes the linger of the producer every status and result record goes through."""
    env = {} if value is None else {"kafka_producer_linger_ms": value}
    worker, _ = build_worker(clean_env, tmp_path, **env)
    assert (worker.app.conf.producer_linger, worker.app.producer.linger_ms) == (seconds, int(seconds * 1000))


@pytest.mark.parametrize(("store", "ttl"), [("rocksdb", 7200), ("memory", None)])
def test_task_status_entries_expire_on_disk_after_the_retention(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, store: str, ttl: int | None
) -> None:
    """On disk the table outlives restarts, so RocksDB's time-to-live must carry task_status_retention_hours."""
    _, parts = build_worker(
        clean_env, tmp_path, table_store=store, task_status_retention_hours="2", task_status_table="true"
    )
    table = parts.status.task_status
    assert table.options.get("ttl") == ttl and str(table.data.url).startswith(f"{store}:")


def test_without_the_task_status_table_no_table_is_made(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default: statuses in Redis, so no task-status table, changelog topic or tracker agent."""
    worker, parts = build_worker(clean_env, tmp_path)
    assert parts.status.task_status is None
    assert not any("task-status" in name for name in worker.app.tables)
    assert "task-status-tracker" not in worker.app.agents and "worker-stats-tracker" in worker.app.agents


def test_safe_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.chdir(tmp_path)
    s = load_settings()
    assert (s.web_host, s.metrics_host) == ("127.0.0.1", "127.0.0.1")
    assert s.web_auth_token is None and s.web_search_enabled is False
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert (s.max_metadata_bytes, s.max_metadata_keys, s.max_metadata_depth, s.max_title_chars) == (16384, 256, 8, 1000)
    assert (s.store_batch_points, s.store_batch_bytes) == (1000, 8 * 1024 * 1024)


def test_secrets_come_from_files_and_are_never_shown(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.chdir(tmp_path)
    (tmp_path / "pw").write_text("s3cret-from-file\n", encoding="utf-8")
    clean_env.setenv("VECTORIZE_WORKER_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "weaviate__api_key").write_text("wv-key", encoding="utf-8")
    (secrets / "web_auth_token").write_text("tok", encoding="utf-8")
    clean_env.setenv("VECTORIZE_WORKER_SECRETS_DIR", str(secrets))
    clean_env.setenv("VECTORIZE_WORKER_WEB_AUTH_TOKEN", "from-env-wins")
    s = load_settings()
    assert s.kafka_sasl_password is not None and s.kafka_sasl_password.get_secret_value() == "s3cret-from-file"
    assert s.weaviate.api_key is not None and s.weaviate.api_key.get_secret_value() == "wv-key"
    assert s.web_auth_token is not None and s.web_auth_token.get_secret_value() == "from-env-wins"
    shown = f"{s!r} {s} {s.model_dump()} {s.model_dump_json()}"
    assert "s3cret-from-file" not in shown and "wv-key" not in shown and "from-env-wins" not in shown


def test_an_unreadable_secret_file_names_the_variable_not_the_content(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.chdir(tmp_path)
    clean_env.setenv("VECTORIZE_WORKER_REDIS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="VECTORIZE_WORKER_REDIS_PASSWORD_FILE") as info:
        load_settings()
    assert str(tmp_path / "missing") in str(info.value)


def test_a_bad_secret_value_is_not_echoed(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.chdir(tmp_path)
    path = write_yaml(tmp_path, "stores: {weaviate: {api_key: [not-a-string-secret-123]}}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "weaviate.api_key" in str(info.value) and "not-a-string-secret-123" not in str(info.value)


def test_models_allowed_defaults_to_the_configured_models(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from models.families import allowed_models, is_allowed

    clean_env.chdir(tmp_path)
    allowed = allowed_models(load_settings())
    assert is_allowed("sentence-transformers/all-MiniLM-L6-v2", allowed) and is_allowed("ViT-B/32", allowed)
    assert not is_allowed("someone/else", allowed) and not is_allowed("/srv/models/x", allowed)
    clean_env.setenv("VECTORIZE_WORKER_MODELS_ALLOWED", "*")
    opened = allowed_models(load_settings())
    assert is_allowed("someone/else", opened) and not is_allowed("/srv/models/x", opened)
