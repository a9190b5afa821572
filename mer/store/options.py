"""Connection options of an object-store URI (``s3://``, ``gs://``, ``az://``).

Every module opens the store with ``open_store(uri)``, in the driver and
inside Ray workers, so the options cannot travel as an argument. They live in
the process environment instead, which local Ray workers inherit and which
``mer submit`` copies into the job's ``runtime_env``:

- the usual cloud variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``...) are read by lance's
  object_store itself; mer adds ``allow_http`` when ``AWS_ENDPOINT_URL`` is a
  plain ``http://`` endpoint (a local MinIO or moto server), which object_store
  refuses otherwise;
- the job key ``store_options`` (lancedb storage options, e.g.
  ``aws_endpoint``, ``connect_timeout``) is written by the runner to
  ``MER_STORE_OPTIONS`` as JSON before Ray starts, and wins over the above.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from mer.store.errors import StoreError

ENV_VAR = "MER_STORE_OPTIONS"
_S3_ERROR = re.compile(r"<Code>([^<]+)</Code>\s*<Message>([^<]+)</Message>")
_REQUEST_URL = re.compile(r"uri: Some\((\w+://[^/)]+)")
_STATUS = re.compile(r"status: (\d{3})")


def set_store_options(options: Mapping[str, str] | None) -> None:
    """Make ``options`` this process's store options (and its future children's); empty clears them."""
    if options:
        os.environ[ENV_VAR] = json.dumps({str(k): str(v) for k, v in options.items()}, sort_keys=True)
    else:
        os.environ.pop(ENV_VAR, None)


def store_options(uri: str) -> dict[str, str]:
    """The lancedb ``storage_options`` for ``uri``: none for a local folder.

    Raises:
        StoreError: ``MER_STORE_OPTIONS`` is not a JSON object (names the store).
    """
    if "://" not in uri or uri.startswith("file://"):
        return {}
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if endpoint.startswith("http://"):
        options["allow_http"] = "true"
    try:
        given = json.loads(os.environ.get(ENV_VAR) or "{}")
    except json.JSONDecodeError:
        given = None
    if not isinstance(given, dict):
        raise StoreError(f"store {uri!r}: {ENV_VAR} is not a JSON object of storage options")
    return {**options, **{str(k): str(v) for k, v in given.items()}}


def failure_cause(text: str) -> str | None:
    """The short cause of an object store's failure, or None when ``text`` is no such failure.

    Lance reports one as a single line of several KiB (Rust debug output with
    the server's XML inside); this keeps what a user acts on: the server's
    error code and message, or the endpoint that did not answer.
    """
    if match := _S3_ERROR.search(text):
        return f"{match[1]}: {match[2]} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or store_options)"
    where = match[1] if (match := _REQUEST_URL.search(text)) else "the endpoint"
    if "kind: Connect" in text or "ConnectionRefused" in text:
        return f"cannot connect to {where} (check AWS_ENDPOINT_URL or store_options.aws_endpoint)"
    if "kind: Timeout" in text or "timed out" in text:
        return f"no answer from {where} within the timeout (store_options.timeout, connect_timeout)"
    if match := _STATUS.search(text):
        return f"{where} answered HTTP {match[1]}"
    return None
