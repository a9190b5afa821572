"""Corpus: manifest schema, validation and quarantine, PyAV media decoding, face crops, demo corpus.

No Ray here: these functions run in any process (CLI, Ray tasks, tests).
"""
