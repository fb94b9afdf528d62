"""The inputs layer: what a run is given — its configuration, its data, its model and tokenizer.

Owns parsing and validating them (every rejection names the field or record and the fix) and loading the model
(built-in tiny architectures, local checkpoints, module selection). Imports: `base` only; nothing here knows how
gradients are used.
"""
