"""The influence trace: the diagnostic over training steps. A trace specification names each step's checkpoint and
the batch it trained on (spec); the steps run as ordinary runs (steps); their results become one table over steps
(table) and a page (page). Imports ``run``, ``outputs``, ``inputs`` and ``base``; the cluster's fan-out reads the
same specification."""
