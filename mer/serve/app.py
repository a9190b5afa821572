"""``mer serve``: a trained run behind Ray Serve (``POST /predict``, ``GET /health``, ``GET /model``).

Each replica holds one :class:`mer.serve.predictor.Predictor` (encoders and
models loaded once, on the GPU share it asked for). A request is checked in the
replica's event loop (size, form, path, media) and refused there with a 4xx
JSON body naming the problem; usable clips join a ``@serve.batch`` queue, so
concurrent requests are decoded, encoded and predicted together
(``max_batch_size`` 1 turns batching off). The predictor runs in a worker
thread, so ``/health`` answers while a batch is on.

:func:`build_app` is a Serve application builder: ``serve run
cluster/serve.yaml`` and ``serve deploy`` start the same app on a cluster as
``mer serve`` starts locally. (No ``from __future__ import annotations`` here:
Serve reads ``build_app``'s annotation to validate the config's ``args``.)
"""

import asyncio
import logging
import signal
import time
from pathlib import Path

from pydantic import BaseModel
from ray import serve
from ray.serve import Application
from ray.util import metrics
from starlette.requests import Request
from starlette.responses import JSONResponse

from mer.config import AsrSpec
from mer.corpus.media import MediaError
from mer.serve.clips import clip_row
from mer.serve.inputs import (
    RequestError,
    body_limit,
    media_error,
    parse_multipart,
    parse_paths,
    saved_upload,
)
from mer.serve.predictor import load_predictor, records

logger = logging.getLogger("ray.serve")
ROUTES = {"/predict": "POST", "/health": "GET", "/model": "GET"}
LATENCY_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


class ServeArgs(BaseModel):
    """Arguments of the app (``mer serve`` options, or ``args:`` in cluster/serve.yaml).

    Attributes:
        run_dir: the trained run whose final predictor is served.
        checkpoints: serve the seed ensemble of these checkpoint folders instead.
        asr: ``AsrSpec`` fields of the recogniser for clips without text when the
            run has none of its own (``mer serve --asr``).
        max_upload_mb: largest uploaded clip.
        max_seconds: longest clip (media duration).
        allowed_root: folder whose files a JSON ``{"paths": [...]}`` request may
            name; unset = only uploads.
        max_batch_size: requests predicted together (1 = no batching).
        batch_wait_s: how long a batch waits to fill.
        replicas: replicas of the deployment.
        gpus_per_replica: GPU share of each replica (0 = CPU).
        cpus_per_replica: CPUs of each replica.
    """

    run_dir: str | None = None
    checkpoints: list[str] = []
    asr: dict | None = None
    max_upload_mb: float = 50.0
    max_seconds: float = 60.0
    allowed_root: str | None = None
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body is {int(declared) / 2**20:.3g} MB; the limit is {limit / 2**20:.3g} MB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit / 2**20:.3g} MB")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="MerPredictor")
class MerPredictor:
    """One replica: a predictor, the request checks and the batch queue.

    Attributes:
        model: what ``GET /model`` answers: the predictor's description and the limits.
    """

    def __init__(self, args: ServeArgs):
        self.args = args
        self.predictor = load_predictor(args.run_dir, args.checkpoints, asr=AsrSpec(**args.asr) if args.asr else None)
        if self.predictor.shift_warning:
            logger.warning(self.predictor.shift_warning)
        limits = {"max_upload_mb": args.max_upload_mb, "max_seconds": args.max_seconds,
                  "server_paths": args.allowed_root is not None, "max_batch_size": args.max_batch_size}
        self.model = {**self.predictor.describe(), "limits": limits}
        self.root = Path(args.allowed_root).resolve() if args.allowed_root else None
        self.max_upload = int(args.max_upload_mb * 2**20)
        self.predict_batch.set_max_batch_size(args.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(args.batch_wait_s)
        # Ray metrics beside Serve's own (a node's /metrics, Prometheus, cluster/grafana/mer.json)
        self.requests = metrics.Counter("mer_serve_requests_total", "Requests answered, by route and HTTP status",
                                        tag_keys=("route", "status"))
        self.latency = metrics.Histogram("mer_serve_latency_ms", "Time to answer a request (ms)",
                                         boundaries=LATENCY_MS, tag_keys=("route",))

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.removeprefix(request.scope.get("root_path", "")) or "/"
        start = time.perf_counter()
        response = await self._answer(request, path)
        route = path if path in ROUTES else "other"
        self.requests.inc(tags={"route": route, "status": str(response.status_code)})
        self.latency.observe((time.perf_counter() - start) * 1000, tags={"route": route})
        return response

    async def _answer(self, request: Request, path: str) -> JSONResponse:
        try:
            if path not in ROUTES:
                raise RequestError(404, f"no route {path} (POST /predict, GET /health, GET /model)")
            if request.method != ROUTES[path]:
                raise RequestError(405, f"{path} takes {ROUTES[path]}, not {request.method}")
            if path == "/health":
                return JSONResponse({"status": "ok"})
            if path == "/model":
                return JSONResponse(self.model)
            return JSONResponse(await self.predict(request))
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception as exc:  # a bug must not take the server down: answer 500, keep serving
            logger.exception("request failed")
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    async def predict(self, request: Request) -> dict:
        """``POST /predict``: an upload, or server-side paths; label, probabilities, weights per clip."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            body = await _read_body(request, body_limit(self.max_upload))
            upload = parse_multipart(content_type, body, self.max_upload)
            with saved_upload(upload) as path:
                row = await self._checked(path, upload.sample_id, upload.text, upload.filename)
                results = [await self.predict_batch(row)]
        elif content_type.startswith("application/json"):
            if self.root is None:
                raise RequestError(403, "server-side paths are off (start mer serve with --allowed-root DIR); "
                                        "upload the file")
            try:
                payload = await request.json()
            except ValueError:
                raise RequestError(400, "body is not valid JSON") from None
            rows = [await self._checked(path, None, text, str(path.relative_to(self.root)))
                    for path, text in parse_paths(payload, self.root)]
            results = await asyncio.gather(*(self.predict_batch(row) for row in rows))
        else:
            raise RequestError(415, "send a multipart upload (field 'file', optional 'text') or, with --allowed-root, "
                                    'a JSON body {"paths": [...]}')
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RequestError(422, errors[0])
        return {"model_id": self.predictor.model_id, "encoder_versions": self.predictor.versions(),
                "predictions": results}

    async def _checked(self, path: Path, sample_id: str | None, text: str | None, name: str) -> dict:
        """The clip as a checked row, or a 4xx naming ``name`` (what the client sent, not the temp file)."""
        try:
            return await asyncio.to_thread(clip_row, path, sample_id, text, self.args.max_seconds)
        except MediaError as exc:
            raise media_error(exc, name) from None

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict_batch(self, rows: list[dict]) -> list[dict]:
        """Predict queued rows together; a row the encoders fail on gets ``{"error": ...}``."""
        frame = await asyncio.to_thread(self.predictor.predict_rows, rows)
        good = frame[frame["error"] == ""].drop(columns="error")
        predicted = dict(zip(good.index, records(good)))
        return [predicted.get(i, {"error": frame.at[i, "error"]}) for i in range(len(rows))]


def build_app(args: ServeArgs) -> Application:
    """The Serve application for ``args`` (the builder ``cluster/serve.yaml`` names)."""
    actor = {"num_cpus": args.cpus_per_replica}
    if args.gpus_per_replica > 0:
        actor["num_gpus"] = args.gpus_per_replica
    deployment = MerPredictor.options(
        num_replicas=args.replicas, ray_actor_options=actor,
        max_ongoing_requests=max(32, 2 * args.max_batch_size),
    )
    return deployment.bind(args)


def serve_until_interrupted() -> None:
    """Block until Ctrl-C or SIGTERM (``docker stop``, systemd), then shut Serve down (``mer serve``)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


def start(args: ServeArgs, host: str = "127.0.0.1", port: int = 8000, name: str = "mer",
          route_prefix: str = "/") -> str:
    """Start Serve's HTTP proxy on ``host:port`` and run the app there (Ray must be up); returns its URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"
