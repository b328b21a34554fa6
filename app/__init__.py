"""Continuous-time music emotion recognition service (arousal/valence per 500 ms frame)."""

__version__ = "0.1.0"
