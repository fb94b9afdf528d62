"""The outputs layer: everything a run writes and how it is read back.

The typed results (`results`), atomic writing and output directories (`writing`), tables (Parquet), the
Markdown and HTML reports with their figures and findings, the headline figures, and number formatting.
Imports: `maths` (pair masks and cosines for the figures) and `base`; never the run or the cluster.
"""
