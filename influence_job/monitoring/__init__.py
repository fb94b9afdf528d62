"""The monitoring layer: the job's live and final metrics for Prometheus.

The metric definitions and the run's gauges (`metrics`), the push of the headline figures, and the small exporter
that serves a multi-process directory (`exporter`). Imports: `outputs` (the results it summarises) and below.
"""
