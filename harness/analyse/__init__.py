"""Analyse: read a run folder's results into tables, reports, regression gates and user studies."""
