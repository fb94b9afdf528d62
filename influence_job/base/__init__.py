"""The base layer: what every other layer may use and which imports nothing of the project.

Errors with a meaning for the user (`errors`), the exit codes every command returns (`exit_codes`, the one
definition the CLI help, the cluster's retry expression and the docs are generated from) and the memory probes
the planner, the engine and the benchmarks read (`memory`). Imports: the standard library only.
"""
