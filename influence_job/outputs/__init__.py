"""The outputs layer: everything a run writes and how it is read back.

The typed results (`results`), atomic writing and output directories (`writing`), tables (Parquet), the
Markdown and HTML reports with their figures and findings, and number formatting. Imports: `maths` (for the
names of categories and scopes), `inputs` and `base`; never the run or the cluster.
"""
