"""The maths layer: the computation docs/method.md defines, and nothing about how a run is organised.

Projection of per-module gradients, their capture from the model, curvature rows and solves, the per-module
engine that turns factors into RAW/HINV contributions and token scores, the similarity statistics, diagnostics
and validation checks. Imports: `inputs` and `base`; it never writes files, prints progress or talks to peers.
"""
