"""The run layer: one diagnostic run from configuration to output directory.

The stages of a run (`pipeline`), the exchange between ranks (`distributed`), the checkpoint that makes a run
resumable (`checkpoint`), stop handling (`stops`) and progress lines (`progress`). Imports: every layer below;
the review and cluster layers and the CLI sit above it.
"""
