"""Every pod the chart renders passes the restricted Pod Security profile, with every CI values file.

Kubernetes 1.20 has no PodSecurity admission to ask: ``tests.podsecurity`` applies the profile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import podsecurity
from tests.chart.charts import CI_VALUES, MONITORING_API, template


@pytest.mark.parametrize("values_file", CI_VALUES, ids=[path.stem for path in CI_VALUES])
def test_every_rendered_pod_passes_the_restricted_profile(values_file: Path) -> None:
    rendered = template(values_file, api_versions=(MONITORING_API,))
    pods = [pod for manifest in rendered for pod in podsecurity.pod_specs(manifest)]
    assert pods, "no pod rendered"
    found = {
        where: problems
        for where, metadata, spec in pods
        if (problems := podsecurity.violations(metadata, spec))
    }
    assert found == {}
