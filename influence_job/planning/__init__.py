"""The planning layer: what a run will cost before it runs.

Workload description, device profiles, per-module time and memory estimates, rank assignment and the rendered
plan. Imports: `maths`, `inputs` and `base`; the run imports the planner, never the reverse.
"""
