"""The cluster layer: the job as Argo Workflows and Kubernetes objects, and the calls that drive them.

Workflow definitions built with Hera (`workflows`) and the Helm chart generated from them (`chart`), settings,
submission, preflight checks, publishing results as the Workflow's status, and the API client helpers. Imports:
`outputs` (results to publish), `inputs` (YAML with overrides) and `base`; never the run itself, which it
starts as a container.
"""
