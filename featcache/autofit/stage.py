"""What fit's stages hand on (stage: commands, ``fit``'s): the best model so far (:class:`BestSoFar`), and what
each stage did (:class:`StageReport`), which ``fit.json`` keeps."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from ..config import ExtractConfig

__all__ = ["BestSoFar", "StageReport"]


@dataclass
class BestSoFar:
    """The best model so far: a sweep's result, the cache it ran on, the stage that made it, how that cache was
    extracted and what one extraction with those settings costs, in passes of the plain model."""

    result: Any  # SweepResult
    cache: Path
    stage: str
    extract_cfg: ExtractConfig
    passes: float = 1.0
    tta: bool = False


@dataclass
class StageReport:
    """What one of fit's stages did: its record in ``fit.json`` (None: it did not run) and what it did not try, and
    why (each line starts with the stage's name)."""

    name: str
    record: Optional[dict] = None
    skipped: List[str] = field(default_factory=list)

    def skip(self, why: str) -> "StageReport":
        self.skipped.append(f"{self.name}: {why}")
        return self
