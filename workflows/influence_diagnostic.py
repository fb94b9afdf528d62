"""Module-level Argo objects for `hera generate yaml workflows/`, built with the default ClusterSettings.

The same builders serve `influence-job render` (which also takes a values file and --set overrides),
`influence-job submit` and the Helm chart's templates.
"""

from influence_job.cluster.settings import ClusterSettings
from influence_job.cluster.workflows import build_cron_workflow, build_workflow_template

settings = ClusterSettings()
influence_diagnostic = build_workflow_template(settings)
influence_nightly = build_cron_workflow(settings)
