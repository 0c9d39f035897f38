"""Where the built-in models' shipped weights and held-out sets lie (a leaf: imports nothing)."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
