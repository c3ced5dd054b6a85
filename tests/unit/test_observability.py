"""The Grafana dashboard and the Prometheus alert rules read only what the worker exports.

Every metric name in a rule or a panel query must be a series the worker's registry (ops.metrics.Metrics)
exposes, with labels that metric has; the alerts and panels the operations docs promise are there; the
dashboard JSON is what deploy/grafana/dashboard.py writes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from ops.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vectorize-worker.json"

# PromQL words that are not metric names: functions are followed by "(", these are not always
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
# labels every scraped series gets from Prometheus (target labels), besides the metric's own
TARGET_LABELS = {"job", "instance"}


def exported() -> dict[str, set[str]]:
    """Every series name the worker's registry exposes, with the labels each may carry."""
    metrics = Metrics()
    names: dict[str, set[str]] = {}
    collectors = [c for c in vars(metrics).values() if isinstance(c, MetricWrapperBase)]
    assert collectors, "ops.metrics.Metrics holds no prometheus_client metric"
    for collector in collectors:
        labels = set(collector._labelnames)  # noqa: SLF001 - prometheus_client keeps them there
        for family in collector.describe():
            suffixes = {
                "counter": ["_total", "_created"],
                "histogram": ["_bucket", "_sum", "_count", "_created"],
                "gauge": [""],
            }[family.type]
            for suffix in suffixes:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def parse(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, labels matched per metric, labels grouped by) of a PromQL expression, without a parser:
    strings, ranges and Grafana's $variables are dropped, then identifiers are read by their place."""
    matchers: dict[str, set[str]] = {}
    for name, body in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        matchers.setdefault(name, set()).update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    grouped = set()
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        grouped.update(label.strip() for label in body.split(",") if label.strip())
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word in KEYWORDS:
            continue
        names.add(word)
    return names, matchers, grouped


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def queries() -> list[tuple[str, str]]:
    out = [(f"alert {rule['alert']}", rule["expr"]) for rule in rules()]
    for panel in dashboard()["panels"]:
        out += [(f"panel {panel['title']!r}", t["expr"]) for t in panel.get("targets", [])]
    return out


def test_the_parser_reads_names_labels_and_groupings() -> None:
    names, matchers, grouped = parse(
        'histogram_quantile(0.95, sum by (le, store) (rate(worker_store_write_seconds_bucket{job="w"}[5m]))) '
        "> 0.9 * 4 * 1024 and on(instance) absent(up) or 3.6e9 < $x"
    )
    assert names == {"worker_store_write_seconds_bucket", "up"}
    assert matchers == {"worker_store_write_seconds_bucket": {"job"}}
    assert grouped == {"le", "store", "instance"}


def test_the_registry_list_is_the_workers_metrics() -> None:
    names = exported()
    assert {"worker_tasks_processed_total", "worker_consumer_lag", "worker_task_processing_seconds_bucket"} <= set(
        names
    )
    assert names["worker_consumer_lag"] == {"topic", "partition"}
    assert "worker_tasks_processed" not in names  # counters are exposed with _total


@pytest.mark.parametrize(("where", "expr"), queries())
def test_every_query_reads_exported_metrics_and_their_labels(where: str, expr: str) -> None:
    known = exported()
    names, matchers, grouped = parse(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - set(known)
    assert not unknown, f"{where} uses {sorted(unknown)}, which the worker does not export (ops/metrics.py)"
    for name, labels in matchers.items():
        extra = labels - known[name] - TARGET_LABELS
        assert not extra, f"{where}: {name} has no label {sorted(extra)} (it has {sorted(known[name])})"
    all_labels = set().union(*(known[n] for n in names)) | TARGET_LABELS
    assert grouped <= all_labels, f"{where} groups by {sorted(grouped - all_labels)}, which {sorted(names)} lack"


def test_the_alerts_the_docs_promise() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(by_name) >= {
        "VectorizeWorkerNoLiveWorkers",
        "VectorizeWorkerLagGrowing",
        "VectorizeWorkerDeadLetters",
        "VectorizeWorkerStoreDown",
        "VectorizeWorkerMemoryNearBudget",
    }
    assert by_name["VectorizeWorkerLagGrowing"]["for"] == "10m"
    assert "worker_consumer_lag" in by_name["VectorizeWorkerLagGrowing"]["expr"]
    assert by_name["VectorizeWorkerNoLiveWorkers"]["expr"].startswith("absent(")
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name


def test_the_dashboard_has_the_panels_the_docs_promise() -> None:
    board = dashboard()
    titles = {panel["title"] for panel in board["panels"]}
    assert titles >= {
        "Live workers",
        "Throughput by status",
        "Task latency percentiles",
        "Lag per partition",
        "Model busy",
        "Store write time",
        "Store errors",
        "Dead letters",
        "Memory per worker",
    }
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    (variable,) = board["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"


def test_the_json_is_the_generators_output() -> None:
    spec = importlib.util.spec_from_file_location("grafana_dashboard", ROOT / "deploy" / "grafana" / "dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text(encoding="utf-8") == module.render(), (
        "deploy/grafana/vectorize-worker.json differs from deploy/grafana/dashboard.py's output: "
        "run python deploy/grafana/dashboard.py"
    )


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    """deploy/prometheus/alerts_test.yml (promtool test rules) fires each alert once, with its annotations."""
    tests = yaml.safe_load((ALERTS.parent / "alerts_test.yml").read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.yml"]
    fired = {
        case["alertname"]: case["exp_alerts"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(fired) == set(by_name), f"alerts without a firing test: {sorted(set(by_name) - set(fired))}"
    for name, alerts in fired.items():
        for alert in alerts:
            assert alert["exp_labels"]["severity"] == by_name[name]["labels"]["severity"], name
            assert alert["exp_annotations"]["description"] == by_name[name]["annotations"]["description"], name


@pytest.mark.timeout(1800)  # the first run builds promtool
def test_promtool_checks_the_rules_and_fires_each_alert_in_its_tests() -> None:
    """scripts/prom_check.sh: promtool check rules + promtool test rules (promtool built once, ~9 min)."""
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "prom_check.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, f"scripts/prom_check.sh failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    assert f"SUCCESS: {len(rules())} rules found" in run.stdout and run.stdout.count("SUCCESS") == 2, run.stdout
