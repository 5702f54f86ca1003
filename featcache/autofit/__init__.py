"""``featcache.fit``: from images to the best model within a time budget (stage: commands, fit's library).

``pipeline`` runs the stages in order (:func:`run_fit`), each handing on a ``stage.StageReport``; ``sizing`` picks
the input size; ``budget`` forecasts what each stage costs; ``variants`` (scales, views) and ``finetune_stage`` are
the stages after the sweep; ``comparison`` is how any two of them are compared. ``python -m featcache.fit`` is the
thin shim ``featcache/fit.py`` over ``featcache.cli.fit``.
"""
from .finetune_stage import FINETUNE_FOLDS
from .pipeline import FitResult, fit, run_fit

__all__ = ["fit", "run_fit", "FitResult", "FINETUNE_FOLDS"]
