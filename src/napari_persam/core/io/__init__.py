"""Files: the one image and mask reader, targets, label writers, concept files, disk cache.

:func:`~.images.read_image` and :func:`~.images.read_mask` are the only readers of
images and masks; every entry point goes through them, and :mod:`.layout` holds the
one rule for what is an image, a stack, or channels.
"""
