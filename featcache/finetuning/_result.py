"""What a fine-tuning run returns (stage: orchestration): :class:`FinetuneResult`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..learn.top import TopClassifier


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the leaderboard (best first) and the best trained model."""

    leaderboard: Any  # pandas DataFrame
    best: TopClassifier
    best_params: dict
    test_scores: Optional[Dict[str, float]]
    scheme: str
    skipped: List[str] = field(default_factory=list)  # configurations not trained when the budget ran out
    train_rows: Optional[np.ndarray] = None  # the cache rows the models trained on
    val_rows: Optional[np.ndarray] = None  # the cache rows the configurations were ranked on
    val_pred: Optional[np.ndarray] = None  # class indices on them, each by a configuration ranked on others
    best_epochs: Optional[int] = None  # the best configuration's early-stopped epoch count
    out: Optional[Path] = None
    files: List[Path] = field(default_factory=list)
