"""Figures (matplotlib + mplhep) and terminal plots."""
