"""PerSAM itself: embeddings, geometry, prompting, the guided decoder, instances, stacks.

Needs numpy, torch and segment_anything; knows nothing of files, models on disk or
front ends. :class:`~napari_persam.core.engine.persam.PerSAM` is the entry point;
the instance and stack modes take what they need (the prompter, an ``embed``
callable), never the engine's private members.
"""
