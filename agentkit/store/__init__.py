"""The SQLite layer: one file holds the runs and their steps, the preference pairs, the
policy registry, the trainer's bookkeeping and the experience library's tables.

``db`` opens a file (creating or migrating it), shares one connection per file per
process, writes in retried transactions and encodes JSON columns; each store is a thin
class over it. Callers type what they take with the protocols in ``protocols``."""

from .improve import ImproveLog, ImproveRun
from .pairs import Pair, PairStore
from .policies import Policy, PolicyRegistry
from .protocols import PairSink, PolicyBook, RunStore
from .runs import Run, Step, StepRecord, TrajectoryStore
from .trainer import TrainerStore

__all__ = ["Run", "Step", "StepRecord", "TrajectoryStore", "Pair", "PairStore", "Policy", "PolicyRegistry",
           "TrainerStore", "ImproveLog", "ImproveRun",
           "RunStore", "PairSink", "PolicyBook"]
