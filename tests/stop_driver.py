"""`influence-job` that signals itself at an exact point of a run, for the clean-stop tests.

    python stop_driver.py PHASE SIGNAL COUNT -- influence-job arguments...

PHASE is a phase name (the signal goes out as that phase starts, i.e. inside it) or ``write-files`` (after
the second file of the output's write, i.e. between files). COUNT signals are sent back to back. The signal
is real (os.kill of this process) and is handled by the installed handlers exactly as an external one.
"""

import logging
import os
import signal
import sys

from influence_job import outputs
from influence_job.cli import main

phase, sig, count = sys.argv[1], getattr(signal, sys.argv[2]), int(sys.argv[3])
argv = sys.argv[sys.argv.index("--") + 1:]


def send():
    for _ in range(count):
        os.kill(os.getpid(), sig)


if phase == "write-files":
    real, written = outputs.atomic_write_bytes, []

    def write_then_signal(path, data):
        real(path, data)
        written.append(path)
        if len(written) == 2:
            send()

    outputs.atomic_write_bytes = write_then_signal
else:
    class AtPhaseStart(logging.Handler):
        def emit(self, record):
            if record.getMessage() == f"[{phase}] ...":
                send()

    logging.getLogger("influence_job").addHandler(AtPhaseStart())

sys.exit(main(argv))
