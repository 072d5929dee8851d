"""OpenLineage run events (START, then COMPLETE or FAIL, with input and output datasets) for each
run of a processor, written by the OpenLineage client to a file (default) or an HTTP endpoint (Marquez)."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

NAMESPACE = "sdg-edge"
PRODUCER = "https://github.com/sdg-edge/sdg-edge"


class OpenLineageConfig(BaseModel):
    """Where run events go (``SDG_OPENLINEAGE__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    transport: Literal["file", "http", "none"] = "file"
    file: Path | None = Field(default=None, description="JSON lines (default: <state_dir>/openlineage/events.jsonl).")
    url: str | None = Field(default=None, description="With transport http: e.g. http://marquez:5000.")


def _client(config: OpenLineageConfig, state_dir: Path):  # type: ignore[no-untyped-def]
    from openlineage.client import OpenLineageClient

    if config.transport == "http":
        from openlineage.client.transport.http import HttpConfig, HttpTransport

        if not config.url:
            raise ValueError("SDG_OPENLINEAGE__URL is needed with the http transport")
        return OpenLineageClient(transport=HttpTransport(HttpConfig(url=config.url)))
    from openlineage.client.transport.file import FileConfig, FileTransport

    path = config.file or state_dir / "openlineage" / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(path), append=True)))


@contextmanager
def run_events(config: OpenLineageConfig, state_dir: Path, *, job: str, inputs: list[tuple[str, str]],
               outputs: list[tuple[str, str]]) -> Iterator[str]:
    """Emit START now, COMPLETE when the block ends, FAIL (and re-raise) when it raises; yields the run id.

    Datasets are (namespace, name) pairs: ``("kafka://host:9092", "sdg.samples.raw")``, ``("file:///…/tables", "lineage")``.
    """
    if config.transport == "none":
        yield ""
        return
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState

    client = _client(config, state_dir)
    run = Run(runId=str(uuid.uuid4()))

    def emit(state: RunState) -> None:
        client.emit(RunEvent(eventType=state, eventTime=datetime.now(UTC).isoformat(), run=run,
                             job=Job(namespace=NAMESPACE, name=job), producer=PRODUCER,
                             inputs=[InputDataset(namespace=ns, name=name) for ns, name in inputs],
                             outputs=[OutputDataset(namespace=ns, name=name) for ns, name in outputs]))

    emit(RunState.START)
    try:
        yield run.runId
    except SystemExit as e:  # a worker that exits through sys.exit: 0 is a normal end
        emit(RunState.COMPLETE if e.code in (0, None) else RunState.FAIL)
        raise
    except BaseException:
        emit(RunState.FAIL)
        raise
    emit(RunState.COMPLETE)
