"""Batch runs: plan one task per image or slice, run them here or on Dask, report."""
