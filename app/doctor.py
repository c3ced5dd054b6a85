"""Self-check: configuration, Kafka, vector store, default model, a sample embedding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.settings import Settings

SAMPLE = "Vectorize-worker self check: the quick brown fox jumps over the lazy dog."


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


async def _timed(name: str, func: Callable[[], Awaitable[str]]) -> Check:
    t0 = time.monotonic()
    try:
        detail = await func()
        return Check(name, True, detail, time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a report line
        return Check(name, False, f"{type(exc).__name__}: {exc}", time.monotonic() - t0)


async def check_kafka(settings: Settings, timeout: float = 10.0) -> str:
    from aiokafka.admin import AIOKafkaAdminClient

    from app.kafka_security import aiokafka_security_kwargs

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=int(timeout * 1000),
        **aiokafka_security_kwargs(settings),  # SASL/TLS as the worker uses them
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        topics = await asyncio.wait_for(admin.list_topics(), timeout)
    except Exception as exc:  # noqa: BLE001 - reported as a connection failure
        raise ConnectionError(
            f"Failed to connect to Kafka at {settings.kafka_bootstrap_servers}: {exc!r} — is the broker running? "
            "(VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS; `make up` starts a local one)"
        ) from None
    finally:
        await admin.close()
    state = "exists" if settings.tasks_topic in topics else "will be created by the worker"
    return f"{settings.kafka_bootstrap_servers} answers; topic {settings.tasks_topic} {state}"


def check_stores(settings: Settings) -> str:
    from sinks.registry import create_stores

    stores = create_stores(settings)
    try:
        for store in stores:
            store.health()
        return "; ".join(f"{s.describe()} answers" for s in stores)
    finally:
        for store in stores:
            store.close()


def check_model(settings: Settings) -> str:
    from models.device import resolve_device
    from models.families import make_loader

    device = resolve_device(settings.device)
    loader = make_loader(
        device=device,
        cache_dir=settings.models_cache_dir,
        allow_download=settings.models_allow_download,
        custom_models=settings.custom_models,
        backend=settings.models_backend,
    )
    t0 = time.monotonic()
    model = loader(settings.default_model)
    loaded = time.monotonic() - t0
    vector = model.embed_texts([SAMPLE], batch_size=1, normalize=None)[0]
    norm = float((vector**2).sum() ** 0.5)
    return (
        f"{settings.default_model} loaded from {model.info.source} on {device} ({model.info.backend}) in {loaded:.1f}s; "
        f"sample vector dim={len(vector)} norm={norm:.3f}"
    )


def check_task_types(settings: Settings) -> str:
    """Import every installed task type (built-in or plugin): a broken plugin shows here, not at its first task."""
    from tasks import types

    broken, loaded = [], []
    for name, target in types.available().items():
        try:
            kind = types.get(name)
        except Exception as exc:  # noqa: BLE001 - every broken type is named
            broken.append(f"{name} ({target}): {exc}")
            continue
        origin = "" if types.BUILTINS.get(name) == target else f", plugin {target.split(':', 1)[0]}"
        loaded.append(f"{name} ({kind.lane} lane{origin})")
    if broken:
        raise RuntimeError(
            f"{len(broken)} installed task type(s) cannot be used (their tasks will fail): {'; '.join(broken)}. "
            "Fix or uninstall the plugin package named."
        )
    return ", ".join(loaded)


async def run_checks(settings: Settings) -> list[Check]:
    loop = asyncio.get_running_loop()
    checks = [Check("configuration", True, f"worker {settings.worker_id}, group {settings.kafka_group_id}")]
    checks.append(await _timed("kafka", lambda: check_kafka(settings)))

    def in_thread(func: Callable[[Settings], str]) -> Callable[[], Awaitable[str]]:
        return lambda: loop.run_in_executor(None, func, settings)

    checks.append(await _timed("task types", in_thread(check_task_types)))
    checks.append(await _timed("vector store", in_thread(check_stores)))
    checks.append(await _timed("model", in_thread(check_model)))
    return checks


def render(checks: list[Check]) -> str:
    lines = ["vectorize-worker doctor"]
    for c in checks:
        lines.append(f"  [{'PASS' if c.ok else 'FAIL'}] {c.name:<14} {c.detail} ({c.seconds:.1f}s)")
    failed = [c.name for c in checks if not c.ok]
    lines.append("result: " + ("all checks passed" if not failed else f"FAILED: {', '.join(failed)}"))
    return "\n".join(lines)


def main(settings: Settings) -> int:
    checks = asyncio.run(run_checks(settings))
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1
