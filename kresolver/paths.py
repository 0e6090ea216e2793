"""Where the shipped data lives: ``conf/`` in a checkout, ``share/kresolver`` when installed."""

from __future__ import annotations

import sys
from pathlib import Path


def conf_dir() -> Path:
    """The directory holding kresolver.conf, root.hints and root.keys."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    for candidate in (checkout, Path(sys.prefix) / "share" / "kresolver"):
        if (candidate / "kresolver.conf").is_file():
            return candidate
    raise FileNotFoundError(f"kresolver's data files are missing (looked in {checkout})")


def conf_file(name: str) -> Path:
    return conf_dir() / name
