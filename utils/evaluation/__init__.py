"""Evaluation: discriminants (defined once, as data), ROC curves, working points."""
