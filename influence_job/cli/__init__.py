"""The cli layer: the `influence-job` command.

`main` (logging, stops and exit codes around one command), `parser` (the arguments) and `commands` (what each
command does, importing the heavy layers only inside the command that needs them). Imports: every layer below.
The console script is `influence_job.cli.main:main`.
"""
