"""The console's ASGI app (Starlette, served by uvicorn): review, live, history pages and their JSON.

- ``/review``: the review queue as cards, ordered by what an answer is worth (``console.queue``); keys pick a
  class (digits), reject (``x``) or move (arrows). Each answer is a ``HumanLabel`` on ``sdg.labels.human``,
  which the review processor joins back to the sample.
- ``/live``: rates, acceptance, quality windows, node temperatures and caps, dead letters and lag, updated
  every second over server-sent events (``/events``).
- ``/history``: runs, dataset (Delta) versions, edge models and their real labels, exports, ``sdg verify``.
- ``/metrics``: Prometheus.

Bound to loopback it asks no one to log in; bound elsewhere it requires HTTP basic auth (the user name is the
reviewer recorded with each answer).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from console.queue import ordered, worth
from console.watch import Watcher
from models.image import sample_image
from schemas.records import Annotation, HumanLabel, SampleDecision

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
LOOPBACK = ("127.0.0.1", "::1", "localhost")
CARDS = 24  # cards on the review page at once


@dataclass
class Looks:
    """What a card shows beside the sample: the labeler's top classes and the nearest real images."""

    labeler: Any = None  # processors.label.Labeler, or None when no labeler is deployed
    reference: tuple[np.ndarray, np.ndarray] | None = None  # real train images (uint8) and their labels
    class_names: tuple[str, ...] = ()
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, decision: SampleDecision) -> dict[str, Any]:
        key = decision.sample.sample_id
        if key not in self.cache:
            self.cache[key] = self._look(decision)
        return self.cache[key]

    def name(self, label: int) -> str:
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def _look(self, decision: SampleDecision) -> dict[str, Any]:
        from models.runtime import fit_image

        sample = decision.sample
        try:
            image = sample_image(sample)
        except ValueError:
            return {"image": "", "top": [], "nearest": []}
        top: list[tuple[int, float]] = []
        if self.labeler is not None and not sample.objects:
            p = self.labeler.model.run(fit_image(image, self.labeler.image_size, self.labeler.channels)[None])[0]
            top = [(int(self.labeler.classes[i]), float(p[i])) for i in np.argsort(-p)[:3]]
        nearest: list[tuple[str, int]] = []
        if self.reference is not None:
            images, labels = self.reference
            side, channels = images.shape[1], 3 if images.ndim == 4 else 1
            mine = fit_image(image, side, channels).astype(np.float32)
            distance = ((images.astype(np.float32) - mine) ** 2).reshape(len(images), -1).sum(axis=1)
            nearest = [(png_uri(images[i]), int(labels[i])) for i in np.argsort(distance)[:3]]
        return {"image": png_uri(image), "top": top, "nearest": nearest}


def png_uri(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class BasicAuth(BaseHTTPMiddleware):
    """HTTP basic auth against one password; the user name becomes the request's reviewer."""

    def __init__(self, app: Any, password: str) -> None:
        super().__init__(app)
        self.password = password

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path.startswith("/metrics"):  # Prometheus scrapes without a login; the pages need one
            return await call_next(request)
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, given = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user, given = "", ""
            if user and secrets.compare_digest(given.encode(), self.password.encode()):
                request.state.reviewer = user
                return await call_next(request)
        return Response("login required", status_code=401, headers={"WWW-Authenticate": 'Basic realm="sdg-edge"'})


class ConsoleCollector(Collector):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def collect(self) -> Iterable[Metric]:
        w = self.watcher
        with w.lock:
            seen, human, waiting = dict(w.seen), dict(w.human), len(w.queue.waiting)
            letters = sum(w.dead_letters.values())
        records = CounterMetricFamily("sdg_console_records", "Records the console has read.", labels=["topic"])
        for topic, n in seen.items():
            records.add_metric([topic], n)
        answers = CounterMetricFamily("sdg_human_labels", "Answers to the review queue.", labels=["reviewer"])
        for reviewer, n in human.items():
            answers.add_metric([reviewer], n)
        yield from (records, answers)
        yield GaugeMetricFamily("sdg_review_queue", "Samples waiting for a person.", value=waiting)
        yield CounterMetricFamily("sdg_dead_letters_seen", "Dead letters on sdg.dlq.", value=letters)


class Retrainer:
    """``sdg train-labeler --answers`` in a child process: one at a time, its outcome kept for the page."""

    def __init__(self, command: list[str] | None, every: int = 0, log: Path | None = None) -> None:
        self.command, self.every, self.log = command, every, log
        self.process: subprocess.Popen[str] | None = None
        self.answers_at_start = 0
        self.last: dict[str, Any] = {}

    def start(self, answers: int) -> bool:
        if self.command is None or self.running():
            return False
        log = self.log or Path(os.devnull)  # a file, not a pipe: a pipe nobody reads would block the child
        with log.open("w") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, text=True)
        self.answers_at_start = answers
        self.last = {"running": True, "answers": answers}
        return True

    def running(self) -> bool:
        if self.process is None:
            return False
        if self.process.poll() is None:
            return True
        output = self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""
        self.last = {"running": False, "answers": self.answers_at_start, "returncode": self.process.returncode,
                     "output": output.strip().splitlines()[-2:]}
        self.process = None
        return False

    def due(self, answers: int) -> bool:
        return self.every > 0 and answers - self.answers_at_start >= self.every

    def status(self) -> dict[str, Any]:
        self.running()
        return self.last


def create_app(watcher: Watcher, *, send: Callable[[HumanLabel], None], reviewer: str, run_id: str,
               looks: Looks | None = None, num_classes: int = 10, tables: Any = None,
               password: str | None = None, exports_log: Path | None = None,
               retrainer: Retrainer | None = None) -> Starlette:
    """The console over ``watcher``'s view of the pipeline; ``send`` publishes an answer; ``retrainer`` retrains the
    labeler from the answers (the page's button, or every ``SDG_CONSOLE__RETRAIN_EVERY`` answers)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    looks = looks or Looks()
    retrainer = retrainer or Retrainer(None)
    verified: dict[str, Any] = {}
    given = [0]  # answers given in this console

    def exported() -> list[dict[str, Any]]:
        if exports_log is None or not exports_log.exists():
            return []
        return [json.loads(line) for line in exports_log.read_text().splitlines()[-20:]][::-1]

    def who(request: Request) -> str:
        return getattr(request.state, "reviewer", reviewer)

    def queue() -> list[SampleDecision]:
        with watcher.lock:
            waiting = list(watcher.queue.waiting.values())
        return ordered(waiting, num_classes)

    def card(decision: SampleDecision) -> dict[str, Any]:
        look = looks.of(decision)
        s = decision.sample
        return {"sample_id": s.sample_id, "generator": s.generator, "asked": s.conditioning.class_label,
                "label": decision.label.label, "confidence": decision.label.confidence, "reason": decision.gate.reason,
                "worth": worth(decision, num_classes), "image": look["image"], "top": look["top"],
                "nearest": look["nearest"], "width": s.width, "height": s.height,
                "objects": [{"label": o.class_label, "bbox": o.bbox} for o in s.objects]}

    async def index(request: Request) -> Response:
        return RedirectResponse("/review")

    async def review(request: Request) -> Response:
        waiting = queue()
        cards = await asyncio.to_thread(lambda: [card(d) for d in waiting[:CARDS]])
        return templates.TemplateResponse(request, "review.html", {
            "page": "review", "cards": cards, "waiting": len(waiting), "reviewer": who(request),
            "answered": sum(watcher.human.values()), "num_classes": num_classes})

    async def api_queue(request: Request) -> Response:
        return JSONResponse([{k: v for k, v in card(d).items() if k not in ("image", "nearest")} for d in queue()])

    async def api_answer(request: Request) -> Response:
        body = await request.json()
        sample_id, label = str(body.get("sample_id", "")), body.get("label")
        with watcher.lock:
            queued = watcher.queue.waiting.get(sample_id)
        if queued is None:
            return JSONResponse({"error": f"{sample_id} is not waiting for review"}, status_code=404)
        if label is not None and not (isinstance(label, int) and 0 <= label < num_classes):
            return JSONResponse({"error": f"label must be a class 0..{num_classes - 1} or null"}, status_code=400)
        try:  # a scene's boxes as the person left them (pixels: x, y, width, height)
            objects = [Annotation(class_label=o["class_label"], bbox=o["bbox"]) for o in body.get("objects") or []]
            if any(not 0 <= o.class_label < num_classes for o in objects):
                raise ValueError(f"object classes must be 0..{num_classes - 1}")
            answer = HumanLabel(run_id=run_id, sample_id=sample_id, label=label, rejected=label is None,
                                reviewer=who(request), objects=objects)
        except (KeyError, TypeError, ValueError) as e:
            return JSONResponse({"error": f"not an answer: {e}"}, status_code=400)
        await asyncio.to_thread(send, answer)
        with watcher.lock:  # off the page at once; the answer is counted when the watcher reads it back
            watcher.queue.answer(sample_id)
        given[0] += 1
        if retrainer.due(given[0]):
            retrainer.start(given[0])
        return JSONResponse({"sample_id": sample_id, "label": label, "waiting": len(watcher.queue.waiting)})

    async def api_retrain(request: Request) -> Response:
        if request.method == "POST" and not retrainer.start(given[0]):
            return JSONResponse({"error": "a retraining is running already", **retrainer.status()}, status_code=409)
        return JSONResponse(retrainer.status())

    async def live(request: Request) -> Response:
        return templates.TemplateResponse(request, "live.html", {"page": "live"})

    async def events(request: Request) -> Response:
        async def stream() -> Any:
            while not await request.is_disconnected():
                yield f"data: {json.dumps(watcher.snapshot())}\n\n"
                await asyncio.sleep(1.0)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def history(request: Request) -> Response:
        facts = await asyncio.to_thread(history_of, tables, exported())
        return templates.TemplateResponse(request, "history.html", {"page": "history", **facts,
                                                                    "verified": verified.get("last")})

    async def api_verify(request: Request) -> Response:
        from sdg.history import verify_lineage

        if tables is None:
            return JSONResponse({"error": "no Delta tables"}, status_code=404)
        result = await asyncio.to_thread(verify_lineage, tables)
        broken = result.broken
        verified["last"] = {"version": result.version, "rows": result.rows, "chains": result.chains,
                            "ok": broken is None, "broken": None if broken is None else
                            f"chain {broken.chain} at seq {broken.seq} (sample {broken.sample_id}): {broken.reason}"}
        return JSONResponse(verified["last"])

    registry = CollectorRegistry()
    registry.register(ConsoleCollector(watcher))
    routes = [Route("/", index), Route("/review", review), Route("/live", live), Route("/history", history),
              Route("/events", events), Route("/api/queue", api_queue), Route("/api/answers", api_answer, methods=["POST"]),
              Route("/api/verify", api_verify, methods=["POST"]), Route("/api/retrain", api_retrain, methods=["GET", "POST"]),
              Mount("/metrics", make_asgi_app(registry)), Mount("/static", StaticFiles(directory=str(HERE / "static")))]
    middleware = [Middleware(BasicAuth, password=password)] if password else []
    return Starlette(routes=routes, middleware=middleware)


def history_of(tables: Any, exports: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs (from lineage), dataset versions (the samples table's Delta log), edge models and their labels."""
    from deltalake import DeltaTable

    from sdg.history import query

    facts: dict[str, Any] = {"runs": [], "versions": [], "models": [], "human_labels": 0, "exports": exports}
    if tables is None:
        return facts
    if tables.open("lineage") is not None:
        facts["runs"] = query(tables, """
            SELECT run_id, min(created_ms) AS started_ms,
                   count(DISTINCT sample_id) FILTER (WHERE stage = 'generated') AS generated,
                   count(DISTINCT sample_id) FILTER (WHERE stage = 'accepted') AS accepted,
                   count(DISTINCT sample_id) FILTER (WHERE stage = 'review') AS review,
                   count(DISTINCT sample_id) FILTER (WHERE stage = 'human') AS human
            FROM lineage GROUP BY run_id ORDER BY started_ms DESC LIMIT 50""").to_pylist()
        facts["human_labels"] = sum(r["human"] for r in facts["runs"])
    samples = tables.open("samples")
    if samples is not None:
        facts["versions"] = [{"version": h.get("version"), "timestamp": h.get("timestamp"),
                              "operation": h.get("operation"),
                              "rows": (h.get("operationMetrics") or {}).get("num_added_rows")}
                             for h in DeltaTable(tables.path("samples")).history(20)]
    models = tables.open("models")
    if models is not None:
        for row in models.to_pyarrow_table(columns=["version", "created_ms", "real_labels", "metrics_json"]).to_pylist():
            metrics = json.loads(row.pop("metrics_json"))
            facts["models"].append({**row, "int8_accuracy": metrics.get("int8_accuracy")})
    return facts


def build(settings: Any, *, watch: bool = True) -> tuple[Starlette, Watcher]:
    """The console of ``settings``' pipeline: its broker, labeler, real reference set and Delta tables.

    Raises:
        ConfigError: bound off loopback without a password.
    """
    from streams import admin
    from streams.errors import ConfigError
    from streams.producer import RecordProducer

    config = settings.console
    password = config.password.get_secret_value() if config.password is not None else None
    if config.host not in LOOPBACK and not password:
        raise ConfigError(f"the console on {config.host} needs a login: set SDG_CONSOLE__PASSWORD")
    admin.create_topics(settings.kafka_client, settings.topics)
    splits = settings.splits()
    reference = splits.reference
    try:
        labeler = settings.labeler()
    except Exception as e:  # no labeler deployed yet: cards show the record's label only
        log.warning("the console shows no top classes: %s", e)
        labeler = None
    real = (np.round(reference.images[splits.train] * 255).astype(np.uint8), reference.labels[splits.train])
    looks = Looks(labeler=labeler, reference=real, class_names=reference.class_names)
    watcher = Watcher(settings.kafka_client)
    producer = RecordProducer(settings.kafka_client)

    def send(answer: HumanLabel) -> None:
        producer.send("sdg.labels.human", answer)
        producer.flush()

    app = create_app(watcher, send=send, reviewer=config.reviewer, run_id=settings.run_id, looks=looks,
                     num_classes=reference.num_classes, tables=settings.delta_tables(), password=password,
                     exports_log=settings.state_dir / "exports.jsonl",
                     retrainer=Retrainer([sys.executable, "-m", "sdg", "train-labeler", "--answers", "--data",
                                          settings.data.source], config.retrain_every,
                                         settings.state_dir / "console-retrain.log"))
    if watch:
        watcher.start()
    return app, watcher


def serve(settings: Any) -> None:
    """Run the console until interrupted."""
    import uvicorn

    app, watcher = build(settings)
    try:
        uvicorn.run(app, host=settings.console.host, port=settings.console.port, log_level="warning")
    finally:
        watcher.stop()
