"""The review layer: what is done with finished outputs.

Comparing two runs (`compare`) and promoting a run to the baseline the nightly job compares against
(`baseline`). Imports: `run` (the checkpoint's settings), `outputs`, `inputs`, `base`.
"""
