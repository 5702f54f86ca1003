"""Look at a dataset through its cached features (stage: insight, beside the commands): duplicates and leaks across
splits, likely label errors, outliers, class confusion, a 2-D map, and one self-contained HTML report.

``neighbours`` (block-wise exact kNN from the HDF5 file; faiss/hnswlib beyond ``EXACT_LIMIT`` rows), ``duplicates``
(pixel-confirmed copies, byte hashes, clusters, leaks), ``labels`` (out-of-fold probabilities, confident learning),
``outliers``, ``confusion``, ``embedding`` (PCA features, the map), ``report`` (HTML), ``pipeline`` (``inspect``,
``run_inspect``). Never imports torch.
"""
from .pipeline import FINDINGS, InspectResult, inspect, run_inspect
from .report import summary_lines

__all__ = ["FINDINGS", "InspectResult", "inspect", "run_inspect", "summary_lines"]
