"""The console: its queue order, its login, and (in real headless Chromium, against a real broker) the whole
review loop: keyboard answers → sdg.labels.human → the review join → sdg.samples.accepted → lineage → history."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from console.app import create_app
from console.queue import ordered
from console.watch import Watcher
from schemas.examples import example, example_sample
from schemas.records import Annotation, Gate, HumanLabel, Label, SampleDecision
from streams.config import KafkaConfig
from streams.producer import RecordProducer
from tests.conftest import collect, free_port, sdg_command


def queued(i: int, run_id: str = "r", *, margin: float = 0.5, agrees: bool = True, generator: str = "gan",
           label: int | None = None, image: bytes | None = None) -> SampleDecision:
    record = example(SampleDecision, i, run_id)
    sample = record.sample.model_copy(update={"generator": generator, "image_format": "raw", "width": 8, "height": 8,
                                              "image": image or bytes(range(64))})
    guess = Label(label=i % 10 if label is None else label, confidence=0.6, margin=margin, entropy=0.5,
                  agrees=agrees, labeler="labeler", labeler_version="0" * 16)
    return record.model_copy(update={"sample": sample, "label": guess,
                                     "gate": Gate(decision="review", reason=f"uncertain label: margin {margin:.2f}",
                                                  gate="example")})


def scene(i: int, run_id: str = "r", **options: Any) -> SampleDecision:
    """A two-object scene the labeler doubted."""
    record = queued(i, run_id, **options)
    objects = [Annotation(class_label=1, bbox=[0, 0, 4, 4]), Annotation(class_label=2, bbox=[4, 4, 4, 4])]
    sample = record.sample.model_copy(update={"generator": "procedural", "objects": objects,
                                              "sample_id": f"{record.sample.sample_id}-scene"})
    return record.model_copy(update={"sample": sample, "label": record.label.model_copy(update={"objects": objects})})


def test_the_queue_puts_doubt_and_disagreement_first_and_spreads_generators_and_classes() -> None:
    sure = queued(0, margin=0.9, label=1)
    unsure = [queued(i, margin=0.05, label=1) for i in range(1, 4)]  # one group: gan, class 1
    disagrees = queued(4, margin=0.3, agrees=False, label=2)
    other = queued(5, margin=0.2, generator="diffusion", label=1)
    order = [d.sample.sample_id for d in ordered([sure, *unsure, disagrees, other], 10)]
    assert order[0] == disagrees.sample.sample_id  # disagreement with the conditioning weighs most
    assert order[1:4] == [unsure[0].sample.sample_id, other.sample.sample_id, unsure[1].sample.sample_id]  # spread
    assert order[-1] == sure.sample.sample_id


def _app(watcher: Watcher, sent: list[HumanLabel], **options: Any) -> TestClient:
    return TestClient(create_app(watcher, send=sent.append, reviewer="ada", run_id="console", **options))


def test_answers_become_human_labels_and_leave_the_queue() -> None:
    watcher, sent = Watcher(), []  # type: ignore[var-annotated]
    for i in range(3):
        watcher.take("sdg.samples.review", queued(i))
    client = _app(watcher, sent)
    page = client.get("/review")
    assert page.status_code == 200 and page.text.count('class="card') == 3
    first = queued(0).sample.sample_id
    assert client.post("/api/answers", json={"sample_id": first, "label": 7}).json()["waiting"] == 2
    assert client.post("/api/answers", json={"sample_id": queued(1).sample.sample_id, "label": None}).status_code == 200
    assert client.post("/api/answers", json={"sample_id": first, "label": 7}).status_code == 404  # answered already
    assert client.post("/api/answers", json={"sample_id": queued(2).sample.sample_id, "label": 12}).status_code == 400
    assert [(a.sample_id, a.label, a.rejected, a.reviewer) for a in sent] == [
        (first, 7, False, "ada"), (queued(1).sample.sample_id, None, True, "ada")]
    assert [c["sample_id"] for c in client.get("/api/queue").json()] == [queued(2).sample.sample_id]
    for answer in sent:  # what the watcher reads back from sdg.labels.human
        watcher.take("sdg.labels.human", answer)
    metrics = client.get("/metrics/").text
    assert 'sdg_human_labels_total{reviewer="ada"} 2.0' in metrics and "sdg_review_queue 1.0" in metrics


def test_a_scene_is_answered_with_its_boxes_as_the_person_left_them() -> None:
    watcher, sent = Watcher(), []  # type: ignore[var-annotated]
    watcher.take("sdg.samples.review", scene(0))
    client = _app(watcher, sent)
    assert client.get("/review").text.count('class="box') == 2
    sample_id = scene(0).sample.sample_id
    bad = {"sample_id": sample_id, "label": 1, "objects": [{"class_label": 42, "bbox": [0, 0, 4, 4]}]}
    assert client.post("/api/answers", json=bad).status_code == 400
    boxes = [{"class_label": 1, "bbox": [0, 0, 4, 4]}, {"class_label": 4, "bbox": [3, 3, 5, 5]}]
    assert client.post("/api/answers", json={"sample_id": sample_id, "label": 1, "objects": boxes}).status_code == 200
    assert [(o.class_label, o.bbox) for o in sent[0].objects] == [(1, [0, 0, 4, 4]), (4, [3, 3, 5, 5])]


def test_off_loopback_the_console_asks_for_a_login_and_the_user_is_the_reviewer() -> None:
    watcher, sent = Watcher(), []  # type: ignore[var-annotated]
    watcher.take("sdg.samples.review", queued(0))
    client = _app(watcher, sent, password="s3cret")
    assert client.get("/review").status_code == 401
    assert client.get("/review", auth=("bob", "wrong")).status_code == 401
    answer = {"sample_id": queued(0).sample.sample_id, "label": 3}
    assert client.post("/api/answers", json=answer, auth=("bob", "s3cret")).status_code == 200
    assert sent[0].reviewer == "bob"


# --- the browser test -------------------------------------------------------------------------------------


@pytest.fixture
def console_url(kafka: KafkaConfig, quality_state: Path, tmp_path: Path, run_id: str) -> Iterator[tuple[str, Any]]:
    """``sdg console`` on a free port, with the trained labeler (top classes) and the test's own tables."""
    from sdg.settings import Settings

    settings = Settings(kafka=KafkaConfig(bootstrap_servers=kafka.bootstrap_servers), state_dir=quality_state,
                        tables_dir=tmp_path / "tables", run_id=run_id)
    port = free_port()
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(quality_state),
           "SDG_TABLES_DIR": str(settings.tables_dir), "SDG_RUN_ID": run_id}
    server = subprocess.Popen(sdg_command("console", "--port", str(port)), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert server.poll() is None, server.communicate()[0]
        try:
            return urllib.request.urlopen(f"{url}/review", timeout=5).status == 200
        except OSError:
            return False

    try:
        _until(up, 60, "the console to answer")
        yield url, settings
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
        assert server.returncode == 0, output


def _until(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return value


def _human_decisions(kafka: KafkaConfig, run_id: str, ids: set[str]) -> dict[str, SampleDecision]:
    """The human decisions of ``ids`` on sdg.samples.accepted so far."""
    return {r.sample.sample_id: r for r in collect("sdg.samples.accepted", kafka, run_id)
            if r.sample.sample_id in ids and r.label_source == "human"}


def test_a_person_labels_three_samples_with_the_keyboard_and_they_reach_accepted_lineage_and_history(
        kafka: KafkaConfig, console_url: tuple[str, Any], run_id: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from models.reference import load_digits_reference

    url, settings = console_url
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "make test installs Debian's chromium"
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS", tmp_path))
    digits = load_digits_reference()
    with RecordProducer(kafka) as producer:  # the planted review queue: real digits the labeler was unsure of
        for i in range(5):
            pixels = np.round(digits.images[i] * 255).astype(np.uint8).tobytes()
            producer.send("sdg.samples.review", queued(i, run_id, margin=0.05 + 0.01 * i, image=pixels))
        producer.send("sdg.samples.review", scene(9, run_id, margin=0.99))  # sure of itself: the end of the queue
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(settings.state_dir),
           "SDG_TABLES_DIR": str(settings.tables_dir), "SDG_RUNNER__COMMIT_INTERVAL_S": "0.2",
           "SDG_SINK__MAX_BATCH_S": "0.5"}
    join = subprocess.Popen(sdg_command("run", "review"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lineage = subprocess.Popen(sdg_command("run", "lineage", "--group", f"lineage-{run_id}"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            mine = {queued(i, run_id).sample.sample_id for i in range(5)}

            def planted() -> list[str]:
                page.goto(f"{url}/review")
                ids = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.sampleId)")
                return ids if mine <= set(ids) else []

            _until(planted, 30, "the planted samples in the review queue")
            page.screenshot(path=str(shots / "console-review.png"))
            answered = {}
            for key in ("3", "5", "7"):
                sample_id = page.get_attribute(".card.selected", "data-sample-id")
                assert sample_id is not None
                page.keyboard.press(key)
                page.wait_for_selector(f'.card.done[data-sample-id="{sample_id}"]')
                answered[sample_id] = int(key)
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowLeft")
            the_scene = scene(9, run_id).sample.sample_id  # a scene: the second box becomes a 4, dragged, accepted
            page.click(f'.card[data-sample-id="{the_scene}"] .facts')
            page.keyboard.press("b")
            page.keyboard.press("4")
            grip = page.locator(f'.card[data-sample-id="{the_scene}"] .box.on .grip').bounding_box()
            assert grip is not None
            page.mouse.move(grip["x"] + 3, grip["y"] + 3)
            page.mouse.down()
            page.mouse.move(grip["x"] + 3 + 20, grip["y"] + 3 + 20)
            page.mouse.up()
            page.screenshot(path=str(shots / "console-review-scene.png"))
            page.keyboard.press("Enter")
            page.wait_for_selector(f'.card.done[data-sample-id="{the_scene}"]')

            decided = _until(lambda: d if len(d := _human_decisions(kafka, run_id, {*answered, the_scene})) == 4 else None,
                             60, "the four answers on sdg.samples.accepted")
            edited = decided.pop(the_scene).label.objects
            assert [o.class_label for o in edited] == [1, 4] and edited[0].bbox == [0, 0, 4, 4]
            assert edited[1].bbox[:2] == [4, 4] and edited[1].bbox[2] > 4  # resized by the drag
            assert {s: d.label.label for s, d in decided.items()} == answered
            assert {d.reviewer for d in decided.values()} == {"reviewer"}

            def human_rows() -> list[dict[str, Any]]:
                from sdg.history import query

                if settings.delta_tables().open("lineage") is None:
                    return []
                return query(settings.delta_tables(), "SELECT sample_id, label FROM lineage WHERE stage = 'human'").to_pylist()

            rows = _until(lambda: r if len(r := human_rows()) >= 4 else None, 90, "the human stage in lineage")
            assert {r["sample_id"]: r["label"] for r in rows if r["sample_id"] != the_scene} == answered
            page.goto(f"{url}/history")
            assert page.inner_text("#human-labels") == "4"  # each answer is a real label spent
            page.click("#verify")
            page.wait_for_function("document.getElementById('verified').textContent.startsWith('verified')")
            page.screenshot(path=str(shots / "console-history.png"), full_page=True)

            page.goto(f"{url}/live")
            page.wait_for_selector("#generators tr")

            def generated() -> int:
                cell = page.query_selector('#generators td.n[data-generator="example"]')
                return int(cell.inner_text()) if cell else 0

            before = generated()
            with RecordProducer(kafka) as producer:
                for i in range(20):
                    producer.send("sdg.samples.raw", example_sample(1000 + i, run_id))
            _until(lambda: generated() >= before + 20, 30, "the live page to count the new samples")
            page.screenshot(path=str(shots / "console-live.png"), full_page=True)
            browser.close()
    finally:
        for process in (join, lineage):
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
            assert process.returncode == 0, output


def test_the_retrain_button_runs_one_training_at_a_time_and_shows_how_it_ended(tmp_path: Path) -> None:
    import sys

    from console.app import Retrainer

    watcher, sent = Watcher(), []  # type: ignore[var-annotated]
    for i in range(3):
        watcher.take("sdg.samples.review", queued(i))
    slow = Retrainer([sys.executable, "-c", "import time; time.sleep(1); print('labeler v2 deployed')"], every=2,
                     log=tmp_path / "retrain.log")
    client = TestClient(create_app(watcher, send=sent.append, reviewer="ada", run_id="console", retrainer=slow))
    for i in range(2):  # the second answer makes a retraining due
        client.post("/api/answers", json={"sample_id": queued(i).sample.sample_id, "label": 1})
    assert client.get("/api/retrain").json() == {"running": True, "answers": 2}
    assert client.post("/api/retrain").status_code == 409  # one at a time
    _until(lambda: not client.get("/api/retrain").json()["running"], 30, "the retraining to end")
    assert client.get("/api/retrain").json() == {"running": False, "answers": 2, "returncode": 0,
                                                 "output": ["labeler v2 deployed"]}
