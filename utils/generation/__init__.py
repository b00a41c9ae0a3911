"""Built-in training samples: Pythia8 ttbar/QCD events, FastJet jets and a toy CMS detector,
written as flat DeepNTuples-style ROOT trees (documented in README.md, "Built-in samples").

This package does not depend on law/luigi.
"""

from .ntuple import generate_file
from .schema import BRANCHES, TREE_NAME

__all__ = ["BRANCHES", "TREE_NAME", "generate_file"]
