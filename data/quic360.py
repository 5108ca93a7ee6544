"""Prepare QuIC-360 for a run: fetch a split's TSV and every image it links, then write a data CSV of local paths.

    python -m data.quic360 prepare --out data/quic360 [--split test] [--split-url URL | --split-file FILE]
                                   [--workers 16] [--retries 3] [--timeout 30]

Images are fetched concurrently and resumably: each goes to ``<name>.part``, must decode as an image with PIL, and
only then is renamed into ``images/``; a file already there is kept. Transient failures (HTTP 5xx/408/429, timeouts,
resets, truncated bodies) are retried with exponential backoff; permanent ones (404 and other 4xx, a body that is
not an image, Flickr's "photo unavailable" placeholder) are not. What failed goes to ``failed.tsv`` and
``download_report.json``; ``<split>.csv`` keeps only the rows whose image was obtained.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import io
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from contract import write_json_atomic, write_text_atomic

REPOSITORY_RAW = "https://raw.githubusercontent.com/Silviase/QuIC-360/main/dataset/raw"
SPLITS = ("test", "valid", "train", "test-refer")
USER_AGENT = "vlm-ablation-data-prep/0.1 (+https://github.com/Silviase/QuIC-360 research download)"
COLUMNS = ("url", "query", "annotation")
IMAGE_FOLDER = "images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
CHUNK_BYTES = 1 << 16
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0
# Flickr answers a deleted photo with a redirect to a small "photo unavailable" picture, which decodes fine.
PLACEHOLDER_MARKERS = ("photo_unavailable",)


class PrepareError(RuntimeError):
    """A problem with the inputs (split file, output folder) found before any image is fetched."""


class TransientError(Exception):
    """Worth another try: server errors, timeouts, resets, bodies cut short."""


class PermanentError(Exception):
    """Not worth another try: 404 and other client errors, a body that is not an image, a placeholder."""


# ---------------------------------------------------------------------------------------------------------
# The split file.


@dataclass(frozen=True)
class SplitRow:
    url: str
    query: str
    annotation: str


def default_split_url(split: str) -> str:
    return f"{REPOSITORY_RAW}/{split}.tsv"


def read_split(path: Path) -> list[SplitRow]:
    """Rows of a QuIC-360 split TSV; a missing column or a row without an http(s) URL or query is an error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PrepareError(f"{path}: not valid UTF-8 at byte offset {error.start}") from error
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise PrepareError(f"{path}: missing column(s) {missing}; columns found: {reader.fieldnames}")
    rows = []
    for line, record in enumerate(reader, start=2):
        url, query = (record["url"] or "").strip(), (record["query"] or "").strip()
        if not url or not query:
            raise PrepareError(f"{path}: row at line {line} has an empty 'url' or 'query'")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise PrepareError(f"{path}: row at line {line}: url {url!r} is not an http(s) URL")
        rows.append(SplitRow(url=url, query=query, annotation=record["annotation"] or ""))
    if not rows:
        raise PrepareError(f"{path}: no rows")
    return rows


# ---------------------------------------------------------------------------------------------------------
# Local names.

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def local_name(url: str) -> str:
    """A file name derived from the URL alone: readable stem + hash of the whole URL + a known image suffix.

    Only [A-Za-z0-9_-] survive from the URL, so no crafted URL can produce a path separator, '..' or a hidden
    file; the hash keeps URLs with the same last segment (or query strings) apart.
    """
    last_segment = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    stem, dot, suffix = last_segment.rpartition(".")
    if not dot:
        stem, suffix = last_segment, ""
    suffix = f".{suffix.lower()}"
    readable = _UNSAFE.sub("_", stem).strip("_-")[:60] or "image"
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return f"{readable}-{digest}{suffix if suffix in IMAGE_SUFFIXES else '.img'}"


# ---------------------------------------------------------------------------------------------------------
# Fetching one URL.


@dataclass
class Outcome:
    url: str
    file: str  # relative to the output folder
    status: str  # "downloaded" | "present" | "failed"
    attempts: int = 0
    reason: str = ""
    bytes: int = 0


@dataclass(frozen=True)
class FetchSettings:
    timeout_s: float = 30.0
    retries: int = 3  # extra tries after the first, for transient errors only
    backoff_s: float = 1.0  # wait before retry k (1-based) is backoff_s * 2**(k-1), at most MAX_BACKOFF_S
    user_agent: str = USER_AGENT


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    value = error.headers.get("Retry-After") if error.headers else None
    if value and value.strip().isdigit():
        return min(float(value.strip()), MAX_RETRY_AFTER_S)
    return None


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only: a crafted redirect must not make us read file:// or ftp:// URLs."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise PermanentError(f"refused redirect to a non-http(s) URL: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# Proxies still come from the environment (http_proxy, https_proxy, no_proxy), as with any urllib client.
_OPENER = urllib.request.build_opener(_HttpOnlyRedirects())


def _open(url: str, settings: FetchSettings) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": settings.user_agent, "Accept": "image/*,*/*;q=0.8"})
    return _OPENER.open(request, timeout=settings.timeout_s)


def _download_to(url: str, part: Path, settings: FetchSettings) -> int:
    """Stream the body into `part`; classify every failure as transient or permanent."""
    try:
        with _open(url, settings) as response:
            final_url = response.geturl()
            if any(marker in final_url for marker in PLACEHOLDER_MARKERS):
                raise PermanentError(f"photo unavailable (redirected to {final_url})")
            expected = response.headers.get("Content-Length")
            received = 0
            with open(part, "wb") as handle:
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    received += len(chunk)
            if expected is not None and expected.isdigit() and received != int(expected):
                raise TransientError(f"truncated body: {received} of {expected} bytes")
            return received
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code} {error.reason}"
        if error.code >= 500 or error.code in (408, 429):
            raise TransientError(reason) from error
        raise PermanentError(reason) from error
    except http.client.IncompleteRead as error:
        raise TransientError(f"truncated body: {len(error.partial)} bytes then the connection closed") from error
    except TimeoutError as error:
        raise TransientError(f"timed out after {settings.timeout_s:g} s") from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise TransientError(f"timed out after {settings.timeout_s:g} s") from error
        raise TransientError(f"connection failed: {error.reason}") from error
    except (ConnectionError, http.client.HTTPException) as error:
        raise TransientError(f"connection failed: {type(error).__name__}: {error}") from error


def _check_image(part: Path) -> None:
    """Decode the whole image: a body cut short or not an image at all fails here, not in the runner later."""
    try:
        with Image.open(part) as image:
            image.load()
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        if "truncated" in str(error).lower():  # the server sent fewer bytes than the image needs: try again
            raise TransientError(f"truncated image: {error}") from error
        raise PermanentError(f"not a decodable image: {type(error).__name__}: {error}") from error


def fetch_image(url: str, out_dir: Path, settings: FetchSettings, stop: threading.Event | None = None) -> Outcome:
    """Fetch one image into out_dir/images/ unless it is already there; never raises for network problems.

    Once `stop` is set (the run was interrupted) a failed try is not retried, so Ctrl-C ends within one timeout.
    """
    if stop is None:
        stop = threading.Event()
    relative = f"{IMAGE_FOLDER}/{local_name(url)}"
    target = out_dir / relative
    if target.is_file():
        return Outcome(url=url, file=relative, status="present", bytes=target.stat().st_size)
    part = target.with_name(target.name + ".part")
    attempts = 0
    while True:
        attempts += 1
        retry_after: float | None = None
        try:
            size = _download_to(url, part, settings)
            _check_image(part)
            part.replace(target)
            return Outcome(url=url, file=relative, status="downloaded", attempts=attempts, bytes=size)
        except PermanentError as error:
            part.unlink(missing_ok=True)
            return Outcome(url=url, file=relative, status="failed", attempts=attempts, reason=str(error))
        except TransientError as error:
            part.unlink(missing_ok=True)
            cause = error.__cause__
            if isinstance(cause, urllib.error.HTTPError):
                retry_after = _retry_after(cause)
            if attempts > settings.retries or stop.is_set():
                return Outcome(url=url, file=relative, status="failed", attempts=attempts, reason=str(error))
        backoff_s = min(settings.backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S)
        if stop.wait(retry_after if retry_after is not None else backoff_s):  # woken early by an interruption
            return Outcome(url=url, file=relative, status="failed", attempts=attempts, reason="interrupted")


def fetch_all(
    urls: Iterable[str],
    out_dir: Path,
    settings: FetchSettings,
    workers: int,
    progress: Callable[[int, int, Outcome], None] | None = None,
) -> list[Outcome]:
    """Fetch every URL with a thread pool; outcomes come back in the order of `urls`."""
    urls = list(urls)
    (out_dir / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="quic360-fetch")
    try:
        futures = [pool.submit(fetch_image, url, out_dir, settings, stop) for url in urls]
        for future in as_completed(futures):  # collected here, in the calling thread: no lock needed
            outcome = future.result()
            outcomes[outcome.url] = outcome
            if progress is not None:
                progress(len(outcomes), len(urls), outcome)
    finally:
        # On Ctrl-C or an error, drop the queued downloads instead of finishing all of them; the ones in flight
        # end within their timeout without another try, and leave only .part files, which the next run replaces.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return [outcomes[url] for url in urls]


# ---------------------------------------------------------------------------------------------------------
# The whole prepare step.


@dataclass
class PrepareReport:
    split: str
    split_source: str
    data_csv: str
    images_total: int = 0
    images_downloaded: int = 0
    images_present: int = 0
    images_failed: int = 0
    rows_total: int = 0
    rows_written: int = 0
    samples_total: int = 0
    samples_written: int = 0
    failures: list[dict[str, object]] = field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        return self.rows_total - self.rows_written

    @property
    def samples_dropped(self) -> int:
        return self.samples_total - self.samples_written

    def summary_line(self) -> str:
        return (
            f"images: {self.images_total} distinct, {self.images_downloaded} downloaded, "
            f"{self.images_present} already present, {self.images_failed} failed; "
            f"{self.data_csv}: {self.samples_written} of {self.samples_total} samples "
            f"({self.rows_written} of {self.rows_total} captions), "
            f"{self.samples_dropped} samples ({self.rows_dropped} captions) dropped because their image is missing"
        )


SPLIT_FILE_HINT = (
    "\nTo use a copy of the split TSV instead, pass --split-file FILE (make quic360 QUIC360_ARGS=--split-file=FILE); "
    "the images are downloaded all the same, so on a host without internet prepare on a connected one and copy the "
    "whole output folder (docs/DATA.md)"
)


def fetch_split_file(url: str, destination: Path, settings: FetchSettings) -> None:
    """Download the split TSV (small) with the same retry rules, written next to its final name then renamed."""
    attempts = 0
    part = destination.with_name(destination.name + ".part")
    while True:
        attempts += 1
        try:
            _download_to(url, part, settings)
            part.replace(destination)
            return
        except PermanentError as error:
            part.unlink(missing_ok=True)
            raise PrepareError(f"could not download the split file {url}: {error}{SPLIT_FILE_HINT}") from error
        except TransientError as error:
            part.unlink(missing_ok=True)
            if attempts > settings.retries:
                raise PrepareError(
                    f"could not download the split file {url} after {attempts} tries: {error}{SPLIT_FILE_HINT}"
                ) from error
        time.sleep(min(settings.backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S))


def _tsv_field(text: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", text)


def _write_outputs(out_dir: Path, split: str, rows: list[SplitRow], outcomes: list[Outcome], report: PrepareReport):
    obtained = {outcome.url: outcome.file for outcome in outcomes if outcome.status != "failed"}
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    kept_samples: set[tuple[str, str]] = set()
    for row in rows:
        if row.url in obtained:
            writer.writerow((obtained[row.url], row.query, row.annotation))
            kept_samples.add((row.url, row.query))
            report.rows_written += 1
    report.samples_written = len(kept_samples)
    write_text_atomic(out_dir / f"{split}.csv", buffer.getvalue())

    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    lines = ["url\treason\tattempts\n"] + [
        f"{_tsv_field(o.url)}\t{_tsv_field(o.reason)}\t{o.attempts}\n" for o in failed
    ]
    write_text_atomic(out_dir / "failed.tsv", "".join(lines))
    report.failures = [{"url": o.url, "reason": o.reason, "attempts": o.attempts} for o in failed]
    payload = asdict(report) | {"rows_dropped": report.rows_dropped, "samples_dropped": report.samples_dropped}
    write_json_atomic(out_dir / "download_report.json", payload)


def prepare(
    out_dir: Path,
    *,
    split: str = "test",
    split_url: str | None = None,
    split_file: Path | None = None,
    refresh_split: bool = False,
    workers: int = 16,
    settings: FetchSettings | None = None,
    log: Callable[[str], None] = print,
) -> PrepareReport:
    settings = settings or FetchSettings()
    # Deepest first: the images folder, the output folder, then any parent this run had to make.
    created = [folder for folder in (out_dir / IMAGE_FOLDER, out_dir, *out_dir.parents) if not folder.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare(out_dir, split, split_url, split_file, refresh_split, workers, settings, log)
    except BaseException:
        # A run that stops before it wrote anything (no network for the split file, a bad split file, Ctrl-C)
        # leaves no empty folder behind; a folder that already existed, or now holds a file, stays.
        for folder in created:
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue  # never made (the images folder of a run that stopped before any image)
            except OSError:
                break
        raise


def _prepare(
    out_dir: Path,
    split: str,
    split_url: str | None,
    split_file: Path | None,
    refresh_split: bool,
    workers: int,
    settings: FetchSettings,
    log: Callable[[str], None],
) -> PrepareReport:
    if split_file is not None:
        split_path, source = split_file, str(split_file)
    else:
        split_path = out_dir / f"{split}.tsv"
        source = split_url or default_split_url(split)
        if refresh_split or not split_path.is_file():
            log(f"fetching the {split} split from {source}")
            fetch_split_file(source, split_path, settings)
        else:
            log(f"using the split file already at {split_path} (--refresh-split fetches it again)")
    rows = read_split(split_path)
    urls = list(dict.fromkeys(row.url for row in rows))
    report = PrepareReport(
        split=split,
        split_source=source,
        data_csv=str(out_dir / f"{split}.csv"),
        images_total=len(urls),
        rows_total=len(rows),
        samples_total=len({(row.url, row.query) for row in rows}),
    )
    log(f"{split_path}: {len(rows)} captions, {report.samples_total} samples, {len(urls)} distinct images")

    def progress(done: int, total: int, outcome: Outcome) -> None:
        if outcome.status == "failed":
            log(f"[{done}/{total}] FAILED {outcome.url}: {outcome.reason} ({outcome.attempts} tries)")
        elif done == total or done % 25 == 0:
            log(f"[{done}/{total}] images fetched or present")

    outcomes = fetch_all(urls, out_dir, settings, workers, progress)
    for outcome in outcomes:
        if outcome.status == "downloaded":
            report.images_downloaded += 1
        elif outcome.status == "present":
            report.images_present += 1
        else:
            report.images_failed += 1
    _write_outputs(out_dir, split, rows, outcomes, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.quic360", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="download a split and its images, write <split>.csv")
    prep.add_argument("--out", type=Path, default=Path("data/quic360"), help="output folder (default: data/quic360)")
    prep.add_argument("--split", choices=SPLITS, default="test", help="which split (default: test)")
    source = prep.add_mutually_exclusive_group()
    source.add_argument("--split-url", help="URL of the split TSV (default: the QuIC-360 GitHub repository's raw file)")
    source.add_argument("--split-file", type=Path, help="a local split TSV instead of downloading one")
    prep.add_argument("--refresh-split", action="store_true", help="download the split TSV again even if present")
    prep.add_argument("--workers", type=int, default=16, help="concurrent downloads (default: 16)")
    prep.add_argument("--retries", type=int, default=3, help="extra tries for transient errors (default: 3)")
    prep.add_argument("--timeout", type=float, default=30.0, help="seconds per connection/read (default: 30)")
    prep.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds, doubling (default: 1)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.retries < 0 or args.timeout <= 0 or args.backoff < 0:
        parser.error("--workers must be >= 1, --retries >= 0, --timeout > 0 and --backoff >= 0")
    if args.split_file is not None and not args.split_file.is_file():
        parser.error(f"--split-file {args.split_file}: file not found")

    settings = FetchSettings(timeout_s=args.timeout, retries=args.retries, backoff_s=args.backoff)
    try:
        report = prepare(
            args.out,
            split=args.split,
            split_url=args.split_url,
            split_file=args.split_file,
            refresh_split=args.refresh_split,
            workers=args.workers,
            settings=settings,
        )
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume (complete images are kept)", file=sys.stderr)
        return 130
    print(report.summary_line())
    if report.images_failed:
        print(f"failures listed in {args.out / 'failed.tsv'} and {args.out / 'download_report.json'}")
    if report.images_downloaded + report.images_present == 0:
        print("error: no image could be obtained; nothing to evaluate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
