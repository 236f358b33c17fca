"""Subcommands of the ``napari-persam`` command; see :mod:`napari_persam.cli`."""
