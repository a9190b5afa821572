"""Supervised training on cached embeddings with Ray Train; prediction.

``fit`` and ``predict`` are the functions other stages (self-training,
report) call; ``stage.run`` is the ``train`` stage of a job.
"""
