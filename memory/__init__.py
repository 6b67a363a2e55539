"""SQLite stores: the trajectory store (runs and their steps, with exact tokens)."""

from .trajectories import Run, Step, TrajectoryStore

__all__ = ["Run", "Step", "TrajectoryStore"]
