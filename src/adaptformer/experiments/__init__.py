"""Experiments: sweeps over training configurations, and reports over their run directories."""
