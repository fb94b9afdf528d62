"""`influence-job` that signals itself at an exact point of a run, for the clean-stop tests.

    python stop_driver.py PHASE SIGNAL COUNT -- influence-job arguments...

PHASE is a phase name (the signal goes out as that phase starts, i.e. inside it), ``module:K`` (when the
progress line of the K-th module of [curvature_solve] is logged, i.e. after K modules were saved) or
``write-files`` (after the second file of the output's write, i.e. between files), or ``log:TEXT`` (when a log
line starting with TEXT is logged, e.g. a trace's next step). COUNT signals are sent
back to back. The signal is real (os.kill of this process) and is handled by the installed handlers exactly
as an external one. The model runs as float64_qwen2.py's float64 Qwen2, so that exact comparisons hold.
"""

import logging
import os
import signal
import sys

import float64_qwen2

from influence_job.cli.main import main
from influence_job.outputs import writing as outputs

float64_qwen2.apply()

phase, sig, count = sys.argv[1], getattr(signal, sys.argv[2]), int(sys.argv[3])
argv = sys.argv[sys.argv.index("--") + 1:]


def send():
    for _ in range(count):
        os.kill(os.getpid(), sig)


if phase == "write-files":
    real, written = outputs.atomic_write_bytes, []

    def write_then_signal(path, data):
        real(path, data)
        if ".partial-" in path.parent.name:  # the output's staging directory, not a checkpoint file
            written.append(path)
            if len(written) == 2:
                send()

    outputs.atomic_write_bytes = write_then_signal
else:
    trigger = (f"[curvature_solve] module {phase.split(':')[1]}/" if phase.startswith("module:")
               else phase.removeprefix("log:") if phase.startswith("log:") else f"[{phase}] ...")

    class AtLogLine(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(trigger):
                send()

    logging.getLogger("influence_job").addHandler(AtLogLine())

sys.exit(main(argv))
