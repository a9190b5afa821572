"""Sharded feature extraction with Ray Data: CPU decode tasks -> GPU-pinned encoder actors -> store.

``stage.run(job)`` is the ``extract`` stage; ``pipeline.extract_rows`` runs one
encoder over a set of manifest rows; ``workers`` holds the decode task and the
encoder actor. Ray is imported here and nowhere below (encoders, corpus, store).
"""
