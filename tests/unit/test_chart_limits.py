"""The chart carries the platform limits to the operator config, with the operator's own defaults."""

from __future__ import annotations

import pytest

from tests.unit import test_chart
from tests.unit.test_chart import CHART, helm, operator_config_of, template
from voxtral_operator.config import OperatorConfig

pytestmark = test_chart.pytestmark  # helm must be there, as for the other chart tests

LIMITS = ("allowed_extra_args", "allowed_images", "allowed_media_domains", "namespace_policies", "default_policy")


def test_the_charts_default_limits_are_the_operators_defaults() -> None:
    config = operator_config_of(template())
    defaults = OperatorConfig()
    for field in (*LIMITS, "egress"):
        assert getattr(config, field) == getattr(defaults, field), field


def test_namespace_policies_reach_the_operator_config() -> None:
    config = operator_config_of(
        template(
            "--set",
            "operatorConfig.namespacePolicies[0].namespaces={speech}",
            "--set",
            "operatorConfig.namespacePolicies[0].priorityClassNames={gpu-inference}",
            "--set",
            "operatorConfig.allowedMediaDomains={*.example.com}",
        )
    )
    assert config.policy_for("speech", {}).priority_class_names == ["gpu-inference"]
    assert config.policy_for("other", {}).priority_class_names == []
    assert config.media_domain_allowed("cdn.example.com")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        pytest.param(["--set", "operatorConfig.defaultPolicy.priorityClassNames={system-node-critical}"], "priority"),
        pytest.param(["--set", "operatorConfig.defaultPolicy.gpuTypes={T4-16GB}"], "gpuTypes"),
        pytest.param(["--set", "operatorConfig.namespacePolicies[0].gpuTypes={L4-24GB}"], "namespacePolicies"),
    ],
)
def test_limits_that_cannot_hold_are_refused_at_install(values: list[str], field: str) -> None:
    result = helm("template", "vx", str(CHART), *values)
    assert result.returncode != 0
    assert field in result.stderr


def test_a_node_selector_fence_given_to_the_chart_is_the_whole_fence() -> None:
    """Helm merges a map given in values into the chart's own: the chart holds no default node selector
    map, so the one given is the whole allow-list, with no `*` left beside it."""
    config = operator_config_of(
        template("--set-json", 'operatorConfig.defaultPolicy.nodeSelector={"pool": ["l4-shared"]}')
    )
    assert config.default_policy.node_selector == {"pool": ["l4-shared"]}
    assert OperatorConfig().default_policy.node_selector == {"*": ["*"]}, "unset, any node selector is allowed"
