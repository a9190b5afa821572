"""Talking to a remote Ray cluster (the Ray Jobs client): submit a job YAML to a cluster, then status, logs, stop, list.

- ``client``: which cluster (``--address`` > ``RAY_ADDRESS``), the auth token,
  one-line errors.
- ``submit``: validate locally, package the working dir, ``mer run`` entrypoint.
- ``manage``: status, logs (followed), stop, list of mer jobs.
"""
