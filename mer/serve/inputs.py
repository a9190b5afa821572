"""What a ``POST /predict`` may carry, and the HTTP status of each problem. No Ray here.

Two forms of request:

* a multipart upload (``curl -F file=@clip.mp4 -F text=...``): form field
  ``file`` and an optional ``text``, parsed with the standard library's MIME
  parser; the body is capped while it is read, and the bytes go to a temporary
  file that is deleted whatever happens (:func:`saved_upload`);
* only when the server was started with ``--allowed-root DIR``: a JSON body
  ``{"paths": [...], "texts": [...]}`` naming files on the server, each
  resolved strictly inside that root (:func:`inside_root`).

Every problem is a :class:`RequestError` carrying its status: 400 malformed or
missing field, 403 paths off or outside the root, 404 no such file, 413 too
large, 415 neither form, 422 not usable media (empty, truncated, not media,
too long, no modality).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mer.corpus.media import MediaError, MissingMediaError
from mer.errors import MerError

#: Bytes a multipart body may carry besides the file (form headers, the transcript).
FORM_OVERHEAD = 1 << 20
#: Server-side paths one JSON request may name.
MAX_PATHS = 64


class RequestError(MerError):
    """A request the server refuses; ``status`` is the HTTP status of the reply."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """One uploaded clip: its client-side file name, bytes and optional transcript."""

    filename: str
    data: bytes
    text: str | None

    @property
    def sample_id(self) -> str:
        """The file name's stem (``upload`` when the client sent none)."""
        return Path(self.filename).stem or "upload"

    @property
    def suffix(self) -> str:
        """The file name's extension when it is plain (``.mp4``), which helps FFmpeg guess the format."""
        suffix = Path(self.filename).suffix
        return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


def media_error(exc: MediaError, name: str | None = None) -> RequestError:
    """A media problem as a reply: 404 for a missing server-side file, else 422; ``name`` replaces the path."""
    status = 404 if isinstance(exc, MissingMediaError) else 422
    name = name or exc.path
    return RequestError(status, f"{name}: {exc.problem.replace(exc.path, name)}")


def body_limit(max_upload_bytes: int) -> int:
    """Most bytes a request body may have: the largest clip plus the form around it."""
    return max_upload_bytes + FORM_OVERHEAD


def parse_multipart(content_type: str, body: bytes, max_upload_bytes: int) -> Upload:
    """The ``file`` and ``text`` fields of a ``multipart/form-data`` body.

    Raises:
        RequestError: 400 without a ``file`` field or with a malformed body,
            413 when the file is larger than ``max_upload_bytes``.
    """
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body, policy=email.policy.HTTP
    )
    if not message.is_multipart():
        raise RequestError(400, "malformed multipart body (no boundary or no parts)")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name and name not in fields:
            fields[name] = part
    if "file" not in fields:
        raise RequestError(400, "missing form field 'file' (the clip to predict: curl -F file=@clip.mp4 ...)")
    data = fields["file"].get_payload(decode=True) or b""
    if len(data) > max_upload_bytes:
        raise RequestError(413, f"file is {len(data) / 2**20:.3g} MB; the limit is {max_upload_bytes / 2**20:.3g} MB")
    text = fields["text"].get_payload(decode=True).decode("utf-8", "replace") if "text" in fields else None
    return Upload(fields["file"].get_filename() or "upload", data, text)


@contextmanager
def saved_upload(upload: Upload) -> Iterator[Path]:
    """The upload's bytes in a temporary file, deleted when the block ends (also on error)."""
    fd, name = tempfile.mkstemp(prefix="mer-upload-", suffix=upload.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(upload.data)
        yield Path(name)
    finally:
        os.unlink(name)


def inside_root(root: Path, given: str) -> Path:
    """``given`` (relative to ``root``, or absolute) as a real path strictly inside ``root``.

    Raises:
        RequestError: 403 for a ``..`` component, an absolute path elsewhere, or
            a symlink whose target lies outside the root.
    """
    path = Path(given)
    if ".." in path.parts:
        raise RequestError(403, f"{given}: '..' is not allowed in a path")
    real_root = root.resolve()
    real = (path if path.is_absolute() else real_root / path).resolve()
    if not real.is_relative_to(real_root):
        raise RequestError(403, f"{given}: outside the allowed root")
    return real


def parse_paths(payload, root: Path) -> list[tuple[Path, str | None]]:
    """``(path inside root, transcript)`` per entry of a ``{"paths": [...], "texts": [...]}`` body.

    Raises:
        RequestError: 400 for a malformed body, 413 above ``MAX_PATHS``, 403 for a path outside the root.
    """
    paths = payload.get("paths") if isinstance(payload, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise RequestError(400, 'missing field "paths": a JSON body is {"paths": ["clip.mp4", ...], "texts": [...]}')
    if len(paths) > MAX_PATHS:
        raise RequestError(413, f"{len(paths)} paths in one request; the limit is {MAX_PATHS}")
    texts = payload.get("texts") or [None] * len(paths)
    if not (isinstance(texts, list) and len(texts) == len(paths)
            and all(t is None or isinstance(t, str) for t in texts)):
        raise RequestError(400, '"texts" must be a list of strings (or nulls), one per path')
    return [(inside_root(root, p), t) for p, t in zip(paths, texts)]
