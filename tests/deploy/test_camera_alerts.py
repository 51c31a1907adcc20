"""The camera-check monitoring: the alert rule Prometheus loads (checked and unit-tested
with promtool) and the dashboard's panel per camera, on metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from deploy_helpers import REPO, compose_file, metric_sample_names, require_tool, run_tool

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mplstm-serve.json"
# A model's clips per minute, and what share of them two of its cameras fail on.
CLIPS_PER_MINUTE = 60
UNIT_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'mplstm_camera_checked_clips_total{{model="demo-lipreading", instance="a"}}'
        values: '0+{half}x30'
      - series: 'mplstm_camera_checked_clips_total{{model="demo-lipreading", instance="b"}}'
        values: '0+{half}x30'
      # left90 frozen on 25% of the clips (one replica), front black on 10% of them.
      - series: 'mplstm_view_dropped_total{{model="demo-lipreading", view="left90", reason="frozen", instance="a"}}'
        values: '0+{quarter}x30'
      - series: 'mplstm_view_dropped_total{{model="demo-lipreading", view="front", reason="black", instance="b"}}'
        values: '0+{tenth}x30'
    alert_rule_test:
      - eval_time: 4m
        alertname: MplstmCameraDropped
        exp_alerts: []
      - eval_time: 15m
        alertname: MplstmCameraDropped
        exp_alerts:
          - exp_labels: {{severity: warning, model: demo-lipreading, view: left90}}
            exp_annotations:
              summary: "camera left90 of demo-lipreading dropped on 25% of clips"
              description: "{description}"
"""


def _rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def _alert() -> dict:
    (group,) = _rules()["groups"]
    (rule,) = group["rules"]
    return rule


def test_prometheus_loads_the_rules_compose_mounts_beside_its_config() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    mounts = compose_file()["services"]["prometheus"]["volumes"]
    (path,) = config["rule_files"]
    assert f"./deploy/prometheus-rules.yml:{path}:ro" in mounts


def test_promtool_accepts_the_rules_and_the_config_that_loads_them(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    checked = run_tool([promtool, "check", "rules", str(RULES)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The config names the rules at their path in the container: point it at this file.
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    loaded = run_tool([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "1 rules found" in loaded.stdout


def test_the_alert_fires_for_a_camera_dropped_on_over_a_fifth_of_clips_for_five_minutes(
    tmp_path: Path,
) -> None:
    promtool = require_tool("promtool")
    description = " ".join(_alert()["annotations"]["description"].split())
    rendered = description.replace("{{ $labels.view }}", "left90").replace(
        "{{ $labels.model }}", "demo-lipreading"
    )
    test = tmp_path / "camera-alert.test.yml"
    test.write_text(
        UNIT_TEST.format(
            rules=RULES,
            half=CLIPS_PER_MINUTE // 2,
            quarter=CLIPS_PER_MINUTE // 4,
            tenth=CLIPS_PER_MINUTE // 10,
            description=rendered,
        )
    )
    result = run_tool([promtool, "test", "rules", str(test)])
    assert result.returncode == 0, result.stdout + result.stderr
    # The test is real: a rule at the wrong threshold fails it.
    loose = tmp_path / "loose.yml"
    loose.write_text(RULES.read_text().replace("> 0.2", "> 0.05"))
    test.write_text(test.read_text().replace(str(RULES), str(loose)))
    assert run_tool([promtool, "test", "rules", str(test)]).returncode != 0


def test_the_alert_and_the_camera_panels_read_only_metrics_the_service_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [_alert()["expr"]]
    queries += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    used = {name for q in queries for name in re.findall(r"\bmplstm_\w+", q)}
    assert {"mplstm_view_dropped_total", "mplstm_camera_checked_clips_total"} <= used
    assert used <= metric_sample_names()


def test_the_dashboard_repeats_a_panel_per_camera_of_the_models_shown() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "mplstm_view_dropped_total" in variables["camera"]["definition"]
    assert "$model" in variables["camera"]["definition"]
    (panel,) = [p for p in dashboard["panels"] if p.get("repeat") == "camera"]
    assert "$camera" in panel["title"]
    (target,) = panel["targets"]
    assert 'view="$camera"' in target["expr"] and "by (model, reason)" in target["expr"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 0.2  # drawn where the alert fires
