"""Scaling studies: sweeps as code, a launcher, law fits with uncertainty, plots and a report."""
