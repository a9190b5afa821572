"""Connect to a Ray cluster's Jobs API: address, token, one-line errors.

``mer submit|status|logs|stop|list`` talk to the Ray head's dashboard (default
port 8265) through :class:`ray.job_submission.JobSubmissionClient`. This module
decides where to connect and with which token, and turns the SDK's failures
(unreachable head, HTTP 401/403, unknown job id) into one-line ``MerError``\\ s.

Why mer sends the token itself: in Ray 2.60 the SDK and ``ray job`` attach the
token only when the *client's* environment says ``RAY_AUTH_MODE=token``; a
laptop that holds the cluster's token but not that variable gets HTTP 401.
mer reads the token the way Ray does (``RAY_AUTH_TOKEN``, then the file named
by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``) and always sends it as
``Authorization: Bearer <token>``; a head without token auth ignores it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

from mer.errors import MerError

DEFAULT_DASHBOARD_PORT = 8265
TOKEN_HINT = (
    "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or write ~/.ray/auth_token) "
    "to the cluster's token; on the head `ray get-auth-token` prints it"
)
# The SDK lets these override an explicit address; mer's order is --address first.
_SDK_ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class ClusterError(MerError):
    """The cluster cannot be reached or refused the request; one line says what to do."""


def resolve_address(address: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The Jobs API URL: ``--address``, else ``RAY_ADDRESS``, else an error.

    A bare ``host:port`` gets ``http://`` (the dashboard speaks HTTP); ``ray://``
    client addresses pass through and the SDK maps them to the dashboard.

    Args:
        address: value of ``--address`` (None when not given).
        environ: environment to read ``RAY_ADDRESS`` from (default ``os.environ``).

    Raises:
        ClusterError: neither is set.
    """
    environ = os.environ if environ is None else environ
    address = (address or environ.get("RAY_ADDRESS") or "").strip()
    if not address:
        raise ClusterError(
            f"no Ray cluster address: pass --address http://HEAD:{DEFAULT_DASHBOARD_PORT} "
            f"or set RAY_ADDRESS=http://HEAD:{DEFAULT_DASHBOARD_PORT}"
        )
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


def read_token() -> str | None:
    """The cluster token from where Ray looks for it, or None when there is none.

    Uses Ray's own loader so the lookup order is exactly Ray's.

    Raises:
        ClusterError: ``RAY_AUTH_TOKEN_PATH`` names a missing or empty file.
    """
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the environment may have changed since the last call
    try:
        if not loader.has_token(ignore_auth_mode=True):
            return None
        return loader.get_raw_token(ignore_auth_mode=True).strip() or None
    except AuthenticationError:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
        raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read or is empty") from None
    finally:
        # Ray caches the token process-wide: leave nothing read from this environment for a later ray.init
        loader.reset_cache()


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Hide the SDK's address variables so the resolved address wins."""
    saved = {name: os.environ.pop(name) for name in _SDK_ADDRESS_VARS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def quiet_ray_logs() -> Iterator[None]:
    """Silence the SDK's INFO/WARNING lines (packaging steps, websocket closed).

    They describe Ray's internals (e.g. that ``.git`` is skipped, as intended);
    the user's terminal keeps mer's own lines and the job's logs.
    """
    # Ray's module loggers carry their own INFO level and propagate to the
    # handlers of the "ray" logger, so filter at those handlers.
    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    handlers = list(logging.getLogger("ray").handlers)
    for handler in handlers:
        handler.addFilter(errors_only)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(errors_only)


@contextlib.contextmanager
def cluster_errors(address: str, job_id: str | None = None) -> Iterator[None]:
    """Turn the Jobs SDK's exceptions into one-line ``ClusterError``\\ s.

    Args:
        address: the dashboard URL, named in every message.
        job_id: the job the call is about, named when it does not exist.
    """
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        raise _auth_error(address, 403 if "Authentication failed" in str(exc) else 401) from None
    except aiohttp.WSServerHandshakeError as exc:  # log tailing goes through a websocket
        if exc.status in (401, 403):
            raise _auth_error(address, exc.status) from None
        raise ClusterError(f"{address}: log stream refused (HTTP {exc.status})") from None
    except (ConnectionError, requests.exceptions.ConnectionError, aiohttp.ClientConnectionError):
        raise ClusterError(
            f"cannot reach the Ray dashboard at {address}: is the head running and is this its "
            f"dashboard port (default {DEFAULT_DASHBOARD_PORT})? Set --address or RAY_ADDRESS"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise ClusterError(f"{address}: {type(exc).__name__}: {_first_line(exc)}") from None
    except ValueError as exc:  # the SDK's local checks, e.g. a working_dir too large to upload
        raise ClusterError(f"{address}: {_first_line(exc)}") from None
    except RuntimeError as exc:
        text = str(exc)
        if job_id and ("404" in text or "does not exist" in text):
            raise ClusterError(f"no job '{job_id}' on {address} (mer list shows the jobs)") from None
        raise ClusterError(f"{address}: {_first_line(exc)}") from None


def _auth_error(address: str, status: int) -> ClusterError:
    if status == 403:
        return ClusterError(f"{address} rejected the token (HTTP 403): {TOKEN_HINT}")
    return ClusterError(f"{address} requires a token (HTTP 401): {TOKEN_HINT}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(address: str | None = None):
    """A ``JobSubmissionClient`` for the resolved address, carrying the token.

    Args:
        address: ``--address`` value; ``RAY_ADDRESS`` is used when None.

    Returns:
        ``(client, url)``.

    Raises:
        ClusterError: no address, unreachable head, or missing/invalid token.
    """
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    token = read_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with cluster_errors(url), _explicit_address():
        client = JobSubmissionClient(url, headers=headers)
    return client, url
