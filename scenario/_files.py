"""Where the scenario's data files are, installed or not."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DATA = Path(str(resources.files("scenario") / "data"))
