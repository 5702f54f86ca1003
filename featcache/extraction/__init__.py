"""Extraction: run a frozen model once over a dataset and stream its features into an HDF5 cache.

Stage: extraction, below learning, above models and cache. The path of the data: ``plan`` resolves inputs,
model, layers and the cache key → ``loader`` decodes images in DataLoader workers (uint8 at the final size)
→ ``run`` runs the model in one or more streams and hands rows in order to one writer thread → the cache's
writer appends them to the partial file, and ``job`` publishes the finished file with one rename.
"""
from .explain import explain
from .job import extract
from .plan import Plan, list_layers, plan_extraction

__all__ = ["Plan", "explain", "extract", "list_layers", "plan_extraction"]
