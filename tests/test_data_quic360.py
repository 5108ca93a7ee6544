"""The QuIC-360 prepare step against a real HTTP server on loopback (http.server in a thread, 127.0.0.1, port 0)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import QUIC360_TSV
from PIL import Image

from contract import load_dataset
from data.quic360 import FetchSettings, PrepareError, local_name, prepare, read_split

REPO_ROOT = Path(__file__).resolve().parent.parent
FAST = FetchSettings(timeout_s=2.0, retries=2, backoff_s=0.01)


def image_bytes(image_format: str, colour: tuple[int, int, int], size: tuple[int, int] = (64, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=image_format)
    return buffer.getvalue()


@dataclass
class Reply:
    """One response: `kind` is image | status | truncate | redirect | sleep | barrier | hold (until released)."""

    kind: str
    body: bytes = b""
    status: int = 200
    location: str = ""
    delay_s: float = 0.0


@dataclass
class LoopbackServer:
    base_url: str
    routes: dict[str, list[Reply]] = field(default_factory=dict)
    served: Counter[str] = field(default_factory=Counter)
    user_agents: set[str] = field(default_factory=set)
    barrier: threading.Barrier | None = None
    release: threading.Event = field(default_factory=threading.Event)  # ends every `hold` reply
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base_url + path

    def route(self, path: str, *replies: Reply) -> str:
        """Serve `replies` in order to successive requests of `path`; the last one repeats."""
        self.routes[path] = list(replies)
        return self.url(path)


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            with server.lock:
                number = server.served[self.path]
                server.served[self.path] += 1
                server.user_agents.add(self.headers.get("User-Agent", ""))
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                replies = server.routes.get(self.path, [Reply("status", status=404)])
                self._reply(replies[min(number, len(replies) - 1)])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test): nothing to answer
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _reply(self, reply: Reply) -> None:
            if reply.kind == "sleep":
                time.sleep(reply.delay_s)
                reply = Reply("image", body=reply.body)
            if reply.kind == "hold":
                server.release.wait(timeout=60)
                return  # no answer at all: the client's read times out
            if reply.kind == "barrier":
                assert server.barrier is not None
                try:
                    server.barrier.wait()
                except threading.BrokenBarrierError:
                    reply = Reply("status", status=500)
                else:
                    reply = Reply("image", body=reply.body)
            if reply.kind == "status":
                self.send_error(reply.status)
            elif reply.kind == "redirect":
                self.send_response(302)
                self.send_header("Location", reply.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                # A truncated reply promises the whole body, sends half and closes the connection.
                self.wfile.write(reply.body[: len(reply.body) // 2] if reply.kind == "truncate" else reply.body)
                self.wfile.flush()

    return Handler


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    # Loopback only: never send these requests through a proxy configured for the package registries.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    state = LoopbackServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def write_split(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["url", "query", "annotation"])
        writer.writerows(rows)
    return path


def quiet(_: str) -> None:
    pass


JPEG = image_bytes("JPEG", (200, 30, 30))
PNG = image_bytes("PNG", (30, 200, 30))


@pytest.fixture
def mixed_split(http_server: LoopbackServer, tmp_path: Path) -> tuple[LoopbackServer, Path, dict[str, str]]:
    """A split TSV whose images cover every outcome; returns the server, the TSV and name -> URL."""
    s = http_server
    urls = {
        "ok_jpeg": s.route("/photos/ok_1.jpg", Reply("image", JPEG)),
        "ok_png": s.route("/photos/ok_2.png", Reply("image", PNG)),
        "missing": s.route("/photos/missing.jpg", Reply("status", status=404)),
        "flaky": s.route(
            "/photos/flaky.jpg", Reply("status", status=500), Reply("status", status=503), Reply("image", JPEG)
        ),
        "down": s.route("/photos/down.jpg", Reply("status", status=503)),
        "truncated": s.route("/photos/truncated.jpg", Reply("truncate", JPEG)),
        "corrupt": s.route("/photos/corrupt.jpg", Reply("image", b"<html>not an image</html>" * 10)),
        "placeholder": s.route("/photos/gone.jpg", Reply("redirect", location="/images/photo_unavailable.png")),
    }
    s.route("/images/photo_unavailable.png", Reply("image", PNG))
    rows: list[tuple[str, str, str]] = []
    for name, url in urls.items():
        for query in ("location", "people"):
            rows += [(url, query, f"{name} {query} caption {index}.") for index in range(3)]
    return s, write_split(tmp_path / "split.tsv", rows), urls


def test_prepare_cli_downloads_retries_and_reports_failures(
    mixed_split: tuple[LoopbackServer, Path, dict[str, str]], tmp_path: Path
) -> None:
    server, split, urls = mixed_split
    out = tmp_path / "quic360"
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    completed = subprocess.run(
        [sys.executable, "-m", "data.quic360", "prepare", "--out", str(out), "--split-file", str(split)]
        + ["--workers", "4", "--retries", "2", "--timeout", "2", "--backoff", "0.01"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    summary = completed.stdout.strip().splitlines()
    assert any(
        "images: 8 distinct, 3 downloaded, 0 already present, 5 failed" in line
        and "6 of 16 samples (18 of 48 captions), 10 samples (30 captions) dropped" in line
        for line in summary
    ), completed.stdout

    # Requests served: no retry for 404, corrupt or placeholder; 1 + 2 retries for transient failures (the flaky
    # image fails twice, then its third try, the last one allowed, succeeds).
    assert server.served["/photos/ok_1.jpg"] == 1
    assert server.served["/photos/missing.jpg"] == 1
    assert server.served["/photos/flaky.jpg"] == 3
    assert server.served["/photos/down.jpg"] == 3
    assert server.served["/photos/truncated.jpg"] == 3
    assert server.served["/photos/corrupt.jpg"] == 1
    assert server.served["/photos/gone.jpg"] == 1
    assert all(agent.startswith("vlm-ablation-data-prep/") for agent in server.user_agents)

    with open(out / "failed.tsv", encoding="utf-8", newline="") as handle:
        failed = {row["url"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert set(failed) == {urls[name] for name in ("missing", "down", "truncated", "corrupt", "placeholder")}
    assert failed[urls["missing"]]["reason"].startswith("HTTP 404") and failed[urls["missing"]]["attempts"] == "1"
    assert failed[urls["down"]]["reason"].startswith("HTTP 503") and failed[urls["down"]]["attempts"] == "3"
    assert failed[urls["truncated"]]["reason"].startswith("truncated body")
    assert failed[urls["corrupt"]]["reason"].startswith("not a decodable image")
    assert failed[urls["placeholder"]]["reason"].startswith("photo unavailable")

    report = json.loads((out / "download_report.json").read_text(encoding="utf-8"))
    assert (report["images_downloaded"], report["images_failed"], report["samples_dropped"]) == (3, 5, 10)
    assert {failure["url"] for failure in report["failures"]} == set(failed)

    # Only complete, verified images are left; no .part files.
    images = sorted(path.name for path in (out / "images").iterdir())
    assert images == sorted(local_name(urls[name]) for name in ("ok_jpeg", "ok_png", "flaky"))
    assert (out / "images" / local_name(urls["ok_png"])).read_bytes() == PNG

    # The written CSV is a data file the runner can load: local paths, references grouped per (image, query).
    dataset = load_dataset(out / "test.csv")
    assert dataset.num_rows == 18
    by_key = {(Path(sample.image_path).name, sample.query): sample.references for sample in dataset.samples}
    assert by_key == {
        (local_name(urls[name]), query): [f"{name} {query} caption {index}." for index in range(3)]
        for name in ("ok_jpeg", "ok_png", "flaky")
        for query in ("location", "people")
    }
    for sample in dataset.samples:
        assert sample.image.startswith("images/") and Path(sample.image_path).is_file()


def test_resume_skips_complete_files_and_retries_failed_ones(
    mixed_split: tuple[LoopbackServer, Path, dict[str, str]], tmp_path: Path
) -> None:
    server, split, urls = mixed_split
    out = tmp_path / "quic360"
    first = prepare(out, split_file=split, workers=4, settings=FAST, log=quiet)
    assert (first.images_downloaded, first.images_present, first.images_failed) == (3, 0, 5)
    before = Counter(server.served)
    # An interrupted earlier run leaves a .part file behind: it is replaced, never trusted.
    stale_part = out / "images" / (local_name(urls["missing"]) + ".part")
    stale_part.write_bytes(JPEG[:10])
    server.route("/photos/missing.jpg", Reply("image", JPEG))  # the 404 is fixed upstream

    second = prepare(out, split_file=split, workers=4, settings=FAST, log=quiet)
    assert (second.images_downloaded, second.images_present, second.images_failed) == (1, 3, 4)
    new_requests = server.served - before
    assert (
        new_requests["/photos/ok_1.jpg"] == new_requests["/photos/ok_2.png"] == new_requests["/photos/flaky.jpg"] == 0
    )
    assert new_requests["/photos/missing.jpg"] == 1
    assert not stale_part.exists()
    assert (out / "images" / local_name(urls["missing"])).read_bytes() == JPEG
    assert len(load_dataset(out / "test.csv").samples) == 8


def test_downloads_run_concurrently(http_server: LoopbackServer, tmp_path: Path) -> None:
    # Each image is answered only once 4 requests wait together: a sequential client would time out on the
    # first one (the barrier breaks and the server answers 500 to all of them).
    http_server.barrier = threading.Barrier(4, timeout=5)
    urls = [http_server.route(f"/photos/c{index}.jpg", Reply("barrier", JPEG)) for index in range(4)]
    split = write_split(tmp_path / "split.tsv", [(url, "location", "a caption.") for url in urls])
    report = prepare(tmp_path / "out", split_file=split, workers=4, settings=FetchSettings(retries=0), log=quiet)
    assert report.images_downloaded == 4 and report.images_failed == 0
    assert http_server.max_in_flight == 4


def test_a_timeout_is_retried(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.route("/photos/slow.jpg", Reply("sleep", JPEG, delay_s=1.0), Reply("image", JPEG))
    split = write_split(tmp_path / "split.tsv", [(url, "weather", "sunny.")])
    settings = FetchSettings(timeout_s=0.25, retries=1, backoff_s=0.01)
    report = prepare(tmp_path / "out", split_file=split, workers=1, settings=settings, log=quiet)
    assert report.images_downloaded == 1
    assert http_server.served["/photos/slow.jpg"] == 2


def test_an_image_cut_short_with_a_matching_content_length_is_retried(
    http_server: LoopbackServer, tmp_path: Path
) -> None:
    # HTTP looks complete (Content-Length equals what was sent) but the JPEG stops half way: caught by decoding.
    big = image_bytes("JPEG", (10, 120, 240), (256, 128))
    url = http_server.route("/photos/cut.jpg", Reply("image", big[: len(big) // 2]), Reply("image", big))
    split = write_split(tmp_path / "split.tsv", [(url, "sky", "blue.")])
    report = prepare(tmp_path / "out", split_file=split, workers=1, settings=FAST, log=quiet)
    assert report.images_downloaded == 1 and http_server.served["/photos/cut.jpg"] == 2
    assert (tmp_path / "out" / "images" / local_name(url)).read_bytes() == big


def test_the_split_is_fetched_by_url_once_then_reused(http_server: LoopbackServer, tmp_path: Path) -> None:
    image_url = http_server.route("/photos/a.jpg", Reply("image", JPEG))
    split_text = f"url\tquery\tannotation\n{image_url}\tpeople\tTwo people walk.\n{image_url}\tpeople\tA couple.\n"
    split_url = http_server.route("/raw/test.tsv", Reply("image", split_text.encode()))
    out = tmp_path / "out"
    first = prepare(out, split_url=split_url, workers=2, settings=FAST, log=quiet)
    assert (out / "test.tsv").read_text(encoding="utf-8") == split_text
    assert first.samples_written == 1 and first.rows_written == 2
    prepare(out, split_url=split_url, workers=2, settings=FAST, log=quiet)
    assert http_server.served["/raw/test.tsv"] == 1
    prepare(out, split_url=split_url, refresh_split=True, workers=2, settings=FAST, log=quiet)
    assert http_server.served["/raw/test.tsv"] == 2
    assert http_server.served["/photos/a.jpg"] == 1


def test_a_missing_split_url_is_a_clear_error(http_server: LoopbackServer, tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"could not download the split file .*/raw/nope.tsv: HTTP 404") as error:
        prepare(tmp_path / "out", split_url=http_server.url("/raw/nope.tsv"), settings=FAST, log=quiet)
    assert "--split-file FILE" in str(error.value)
    assert http_server.served["/raw/nope.tsv"] == 1  # a 404 is not retried
    assert not (tmp_path / "out").exists()


def closed_loopback_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once, as on a host without network."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_make_quic360_without_network_names_split_file_and_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "quic360"
    split_url = f"http://127.0.0.1:{closed_loopback_port()}/raw/test.tsv"
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    completed = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), "quic360", f"PYTHON={sys.executable}", f"QUIC360_DIR={out}",
         f"QUIC360_ARGS=--split-url={split_url} --retries=2 --backoff=0.01"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode != 0
    assert f"error: could not download the split file {split_url} after 3 tries: connection failed" in completed.stderr
    assert "pass --split-file FILE (make quic360 QUIC360_ARGS=--split-file=FILE)" in completed.stderr
    assert not (tmp_path / "new").exists(), "an empty output folder was left behind"


def test_a_failed_split_download_keeps_a_folder_that_already_existed(tmp_path: Path) -> None:
    out = tmp_path / "quic360"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    settings = FetchSettings(timeout_s=2.0, retries=0, backoff_s=0.01)
    with pytest.raises(PrepareError, match="--split-file"):
        prepare(out, split_url=f"http://127.0.0.1:{closed_loopback_port()}/t.tsv", settings=settings, log=quiet)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PrepareError):
        prepare(empty, split_url=f"http://127.0.0.1:{closed_loopback_port()}/t.tsv", settings=settings, log=quiet)
    assert empty.is_dir()  # the user's own folder, even empty, is never removed


def test_make_quic360_with_a_split_file_downloads_from_the_server(http_server: LoopbackServer, tmp_path: Path) -> None:
    url = http_server.route("/photos/a.jpg", Reply("image", JPEG))
    split = write_split(tmp_path / "test.tsv", [(url, "people", "Two people."), (url, "people", "A couple.")])
    out = tmp_path / "quic360"
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    completed = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), "quic360", f"PYTHON={sys.executable}", f"QUIC360_DIR={out}",
         f"QUIC360_ARGS=--split-file={split} --workers=2"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "images: 1 distinct, 1 downloaded" in completed.stdout
    assert (out / "images" / local_name(url)).read_bytes() == JPEG
    assert len(load_dataset(out / "test.csv").samples) == 1


def test_an_interrupted_download_resumes_without_fetching_finished_images_again(
    http_server: LoopbackServer, tmp_path: Path
) -> None:
    """Ctrl-C while one image hangs: the finished ones stay and are not requested again; the run stops at once
    instead of retrying the hanging one (5 retries allowed)."""
    slow = http_server.route("/photos/slow.jpg", Reply("hold", JPEG))
    fast = [http_server.route(f"/photos/fast{index}.jpg", Reply("image", JPEG)) for index in range(4)]
    split = write_split(tmp_path / "test.tsv", [(url, "location", "a caption.") for url in (slow, *fast)])
    out = tmp_path / "quic360"
    command = [sys.executable, "-m", "data.quic360", "prepare", "--out", str(out), "--split-file", str(split)]
    command += ["--workers", "2", "--retries", "5", "--timeout", "5", "--backoff", "0.01"]
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    finished = [out / "images" / local_name(url) for url in fast]
    deadline = time.monotonic() + 30
    while not (all(path.is_file() for path in finished) and http_server.served["/photos/slow.jpg"]):
        assert process.poll() is None and time.monotonic() < deadline, "the fast images never arrived"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stdout + stderr
    assert "interrupted: run the same command again to resume" in stderr
    assert http_server.served["/photos/slow.jpg"] == 1, "the hanging image was retried after Ctrl-C"
    assert not (out / "images" / local_name(slow)).exists()
    assert sorted(path.name for path in (out / "images").iterdir()) == sorted(path.name for path in finished)

    http_server.route("/photos/slow.jpg", Reply("image", JPEG))  # the server answers again
    before = Counter(http_server.served)
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "images: 5 distinct, 1 downloaded, 4 already present, 0 failed" in completed.stdout
    new_requests = http_server.served - before
    assert dict(new_requests) == {"/photos/slow.jpg": 1}
    assert len(load_dataset(out / "test.csv").samples) == 5


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///etc/hostname", "Redirection to url 'file:///etc/hostname' is not allowed"),
        ("ftp://127.0.0.1/x.jpg", "non-http(s)"),
    ],
)
def test_a_redirect_away_from_http_is_refused(
    http_server: LoopbackServer, tmp_path: Path, location: str, reason: str
) -> None:
    url = http_server.route("/photos/evil.jpg", Reply("redirect", location=location))
    split = write_split(tmp_path / "split.tsv", [(url, "location", "x.")])
    report = prepare(tmp_path / "out", split_file=split, settings=FAST, log=quiet)
    assert report.images_failed == 1 and reason in str(report.failures[0]["reason"])
    assert http_server.served["/photos/evil.jpg"] == 1
    assert list((tmp_path / "out" / "images").iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("url\tquery\n", r"missing column\(s\) \['annotation'\]"),
        ("url\tquery\tannotation\nfile:///etc/passwd\tlocation\tx\n", r"line 2: url 'file:///etc/passwd' is not"),
        ("url\tquery\tannotation\nhttp://h/a.jpg\tlocation\tx\n\tpeople\ty\n", r"line 3 has an empty 'url' or 'query'"),
    ],
)
def test_a_bad_split_file_is_refused_before_any_download(
    http_server: LoopbackServer, tmp_path: Path, content: str, message: str
) -> None:
    split = tmp_path / "bad.tsv"
    split.write_text(content, encoding="utf-8")
    with pytest.raises(PrepareError, match=rf"bad\.tsv: .*{message}"):
        prepare(tmp_path / "out", split_file=split, settings=FAST, log=quiet)
    assert not (tmp_path / "out").exists()
    assert sum(http_server.served.values()) == 0


def test_local_names_are_deterministic_safe_and_distinct() -> None:
    crafted = [
        "https://live.staticflickr.com/3334/3503709281_60051c1cd0_k.jpg",
        "http://h/../../etc/passwd",
        "http://h/a/%2e%2e%2f%2e%2e%2fx.jpg",
        "http://h/.hidden.PNG",
        "http://h/x.jpg?size=1",
        "http://h/x.jpg?size=2",
        "http://h/" + "a" * 500 + ".jpeg",
        "http://h/",
        "http://h/dir/..",
    ]
    names = [local_name(url) for url in crafted]
    assert names == [local_name(url) for url in crafted]
    assert len(set(names)) == len(names)
    pattern = re.compile(r"^[A-Za-z0-9_-]{1,60}-[0-9a-f]{12}\.(jpg|jpeg|png|img)$")
    for url, name in zip(crafted, names, strict=True):
        assert pattern.match(name), (url, name)
    assert names[0].startswith("3503709281_60051c1cd0_k-") and names[0].endswith(".jpg")
    assert names[3].endswith(".png") and names[1].endswith(".img")


def test_the_real_quic360_test_split_prepares_into_the_same_samples(
    http_server: LoopbackServer, tmp_path: Path
) -> None:
    """Every Flickr URL of the real split, served from loopback: grouping in test.csv matches the original file."""
    if not QUIC360_TSV.is_file():
        pytest.skip(f"{QUIC360_TSV} (the real QuIC-360 test text) is not on this machine")
    rows = read_split(QUIC360_TSV)
    loopback = {
        url: f"{http_server.base_url}/{index}/{url.rsplit('/', 1)[-1]}"
        for index, url in enumerate(dict.fromkeys(r.url for r in rows))
    }
    tiny = image_bytes("JPEG", (90, 120, 200), (16, 8))
    for url in loopback.values():
        http_server.route(url[len(http_server.base_url) :], Reply("image", tiny))
    split = write_split(tmp_path / "test.tsv", [(loopback[r.url], r.query, r.annotation) for r in rows])

    report = prepare(tmp_path / "out", split_file=split, workers=16, settings=FAST, log=quiet)

    original = load_dataset(QUIC360_TSV)
    prepared = load_dataset(tmp_path / "out" / "test.csv")
    assert report.images_failed == 0 and report.samples_dropped == 0
    assert len(prepared.samples) == len(original.samples) == report.samples_total
    assert [(s.query, s.references) for s in prepared.samples] == [(s.query, s.references) for s in original.samples]
    to_local = {url: f"images/{local_name(loopback[url])}" for url in loopback}
    assert [s.image for s in prepared.samples] == [to_local[s.image] for s in original.samples]
