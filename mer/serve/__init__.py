"""Use a trained run on new clips: ``mer predict --run`` and ``mer serve``.

* ``final``: which checkpoints make a run's final predictor (the self-training
  vote, else the train stage's seed ensemble) and how they are voted.
* ``clips``: new clips as manifest-style rows, checked the way validation checks
  a manifest (missing, empty, truncated, not media, too long).
* ``features``: the run's own encoders over those rows, into the model input the
  stored pipeline builds from the store (and, on request, into the store).
* ``predictor``: :class:`Predictor`, encoders and models loaded once; the CLI and
  the server share it, so both give the same probabilities.
* ``inputs``: what an HTTP request may carry (multipart upload, server-side
  paths under a root), each problem with its HTTP status.
* ``app``: the Ray Serve application. Only this module imports Ray.
"""
