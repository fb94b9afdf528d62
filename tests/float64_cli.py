"""`influence-job` with the float64 Qwen2 of float64_qwen2.py: the command line for subprocess and torchrun
tests whose results are compared exactly with in-process runs (see float64_qwen2.py for why)."""

import sys

import float64_qwen2

from influence_job.cli.main import main

float64_qwen2.apply()
sys.exit(main())
