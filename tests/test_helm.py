"""The Helm chart in deploy/helm/trio-sfu (issue 13, item 5).

``helm lint`` and ``helm template`` run when helm is installed. Helm is not packaged in Debian,
PyPI or npm (the registries this project installs from), so CI cannot install it; the chart is
therefore also checked without it, on every run: its YAML parses, every ``.Values`` path the
templates use exists in values.yaml, template actions and blocks balance, every TRIO_SFU_*
variable it sets is a real setting, and the metric the HPA scales on is one /metrics exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from trio_sfu.config import settings

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "trio-sfu"
TEMPLATES = sorted((CHART / "templates").glob("*"))
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "trio-sfu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert {p.name for p in TEMPLATES} >= {
        "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "servicemonitor.yaml",
        "secret.yaml", "backends.yaml", "_helpers.tpl", "NOTES.txt"}


def test_every_values_path_exists() -> None:
    missing = []
    for template in TEMPLATES:
        for path in re.findall(r"\.Values((?:\.[A-Za-z_]\w*)+)", template.read_text()):
            node: Any = VALUES
            for key in path.strip(".").split("."):
                if not isinstance(node, dict) or key not in node:
                    missing.append(f"{template.name}: .Values{path}")
                    break
                node = node[key]
    assert not missing, missing


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_actions_balance(template: Path) -> None:
    text = template.read_text()
    assert text.count("{{") == text.count("}}"), template.name
    actions = re.findall(r"\{\{-?\s*(\w+)", text)
    opened = sum(a in ("if", "range", "with", "define") for a in actions)
    assert opened == actions.count("end"), (template.name, actions)


def test_env_names_are_settings() -> None:
    known = {s.env for _, s in settings()}
    used = set(re.findall(r"name: (TRIO_SFU_\w+)", (CHART / "templates" / "deployment.yaml")
                          .read_text()))
    assert used and not used - known, sorted(used - known)
    # The extraEnv escape hatch takes settings by name too: nothing in values uses others.
    assert not set(VALUES["extraEnv"]) - known


def test_hpa_scales_on_a_metric_we_export() -> None:
    from trio_sfu.metrics import SfuCollector

    text = (CHART / "templates" / "hpa.yaml").read_text()
    assert "name: trio_sfu_subscribers" in text
    exported = {f.name for f in SfuCollector(object(), "n").collect()}
    assert "trio_sfu_subscribers" in exported
    assert VALUES["autoscaling"]["metric"] in ("subscribers", "packets", "cpu")


HELM = shutil.which("helm")


@pytest.mark.skipif(HELM is None, reason="helm is not installed (not packaged in Debian, PyPI "
                    "or npm, so CI has no way to install it; the checks above run instead)")
@pytest.mark.parametrize("sets", [
    [],
    ["autoscaling.metric=packets", "metrics.serviceMonitor.enabled=true",
     "auth.apiKey=k1", "auth.apiSecret=" + "s" * 32, "media.mode=hostNetwork"],
    ["autoscaling.enabled=false", "redis.bundled=false", "redis.url=redis://r:6379",
     "nats.bundled=false", "nats.url=nats://n:4222", "publicIP.source=static",
     "publicIP.addresses={203.0.113.7}"],
])
def test_helm_lint_and_template(sets: list[str]) -> None:
    assert HELM is not None
    flags = [f for s in sets for f in ("--set", s)]
    subprocess.run([HELM, "lint", str(CHART), *flags], check=True, capture_output=True,
                   timeout=120)
    out = subprocess.run([HELM, "template", "t", str(CHART), *flags], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "Deployment" in kinds and "Service" in kinds
