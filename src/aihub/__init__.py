"""aihub: the infrastructure backbone of an AI platform."""

__version__ = "0.1.0"
