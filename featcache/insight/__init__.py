"""Look at a dataset through its cached features (stage: insight, beside the commands): duplicates and leaks across
splits, likely label errors, outliers, class confusion, a 2-D map, and one self-contained HTML report.

``neighbours`` (block-wise exact kNN from the HDF5 file; faiss/hnswlib beyond ``EXACT_LIMIT`` rows), ``duplicates``
(pixel-confirmed copies, byte hashes, clusters, leaks), ``labels`` (out-of-fold probabilities, confident learning),
``outliers``, ``confusion``, ``embedding`` (PCA features, the map), ``report`` (HTML), ``run`` (``inspect``).
Never imports torch.
"""
from .report import summary_lines
from .run import FINDINGS, InspectResult, inspect

__all__ = ["FINDINGS", "InspectResult", "inspect", "summary_lines"]
