"""SQLite stores: the trajectory store (runs and their steps, with exact tokens), preference
pairs, the policy registry, and the experience library."""

from .library import ExperienceLibrary, LibraryItem
from .pairs import Pair, PairStore
from .policies import Policy, PolicyRegistry
from .trajectories import Run, Step, TrajectoryStore

__all__ = ["Run", "Step", "TrajectoryStore", "Pair", "PairStore", "Policy", "PolicyRegistry",
           "ExperienceLibrary", "LibraryItem"]
