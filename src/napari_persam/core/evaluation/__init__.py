"""Measuring quality: datasets of images and masks, the one-shot protocol, metrics."""
