"""influence-job: gradient-similarity and H^-1 influence diagnostics for RL-trained language models."""

__version__ = "0.1.0"
