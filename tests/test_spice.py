"""SPICE: equal to pycocoevalcap's own `Spice().compute_score` run directly (same jars, same inputs), per sample and
per corpus, on awkward captions and several models sharing references; each distinct caption parsed once; the
ways it fails (no jars, damaged jars, a heap too small, a time-out, too little memory), each with its fix.

The tests that run SPICE need its jars (`python -m scoring fetch-spice`, or $SCORING_SPICE_JARS). Without them
they are skipped, with the reason, except where VLM_ABLATION_REQUIRE_SPICE=1 (CI), where that is a failure.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, runner_env, write_quic_csv

from bench.spice_reference import reference_spice
from contract import SAMPLE_SCORES_JSONL, MetricsFile, PredictionRecord, SampleScores, read_json, read_jsonl
from scoring.java import find_java
from scoring.spice import (
    BASE_HEAP_MB,
    JVM_OVERHEAD_MB,
    SPICE_JARS,
    JarPin,
    SpiceItem,
    SpiceJvmError,
    SpiceMemoryError,
    SpiceTimeoutError,
    SpiceUnavailableError,
    cacheable,
    check_spice,
    fetch_spice_jars,
    plan_spice,
    run_spice,
    spice_heap_mb,
    spice_memory_mb,
    unavailable_reason,
)


@pytest.fixture(scope="module")
def jar_dir(spice_jars: Path) -> Path:
    return spice_jars


# More than 505 characters: too long for SPICE's parse cache (LMDB keys), so it is parsed where it occurs. Short
# sentences, so that CoreNLP's parser stays quick on it.
TOO_LONG_TO_CACHE = (
    " ".join(
        f"A {color} boat is tied to the wooden pier number {number}." for number in range(1, 12) for color in ("red",)
    )
    + " Gulls sit on the posts."
)
REFERENCES = {
    "s1": ["A dog is running on green grass.", "A brown dog plays in a park."],
    "s2": ["A man rides a horse on the beach."],
    "s3": ["The café is near the old tower.", "Un café près de la tour."],
    "s4": ["Two people walk on the beach.", "Two people walk on the beach."],  # the same reference twice
    "s5": ["Snow covers the mountains under a grey sky.", "It is cold and cloudy.", "White peaks and clouds."],
    "s6": [TOO_LONG_TO_CACHE, "Boats at a pier."],
}
MODELS = {
    "alpha": {
        "s1": "A dog runs on the grass.",
        "s2": "",  # empty candidate
        "s3": "A café with a 東京 tower.",  # non-ASCII
        "s4": "?! ... ,",  # punctuation only
        "s5": "snow snow snow snow",
        "s6": TOO_LONG_TO_CACHE,
    },
    "beta": {
        "s1": "A dog runs on the grass.",  # the same caption as alpha's: parsed once for both
        "s2": "A man rides a horse on the beach.",  # equal to its only reference
        "s3": "Ünïcode naïve façade",
        "s4": "people walking",
        "s5": "The mountains are white with snow and the sky is grey.",
        "s6": "Red boats are tied to a pier and gulls sit on posts.",
    },
}


def test_run_spice_equals_pycocoevalcap_per_sample_and_corpus(jar_dir: Path, tmp_path: Path) -> None:
    """Two models sharing references, in ONE run_spice call, against one pycocoevalcap run per model."""
    lines: list[str] = []
    ids = sorted(REFERENCES)  # pycocoevalcap's order, so that both means add in the same order
    items = [SpiceItem(f"{model}/{i}", MODELS[model][i], REFERENCES[i]) for model in MODELS for i in ids]
    ours = run_spice(items, find_java(), jar_dir, tmp_path / "work", log=lines.append)

    with reference_spice(jar_dir, tmp_path / "reference") as spice:
        for model, candidates in MODELS.items():
            corpus, per_sample = spice.compute_score(REFERENCES, {i: [candidates[i]] for i in ids})
            expected = [scores["All"]["f"] for scores in per_sample]
            got = [ours[f"{model}/{i}"] for i in ids]
            assert got == expected, model  # exact: the same doubles
            assert float(np.mean(got)) == corpus
    assert ours["beta/s2"] == 1.0 and ours["alpha/s2"] == 0.0  # a copy of the only reference; nothing to match
    assert not any(math.isnan(value) for value in ours.values())
    # Every distinct caption was parsed once, before scoring; only the one too long for the cache was parsed again.
    distinct = {caption for item in items for caption in (item.hypothesis, *item.references)}
    assert not cacheable(TOO_LONG_TO_CACHE) and cacheable(REFERENCES["s3"][1])
    assert f"SPICE: parsing {len(distinct) - 1} distinct captions" in lines[0]
    assert any("parsed while scoring" in line for line in lines)


def test_each_distinct_caption_is_parsed_before_scoring_and_the_cache_is_kept(jar_dir: Path, tmp_path: Path) -> None:
    items = [SpiceItem(f"{model}/{i}", MODELS[model][i], REFERENCES[i]) for model in MODELS for i in ("s1", "s2")]
    cache = tmp_path / "parse-cache"
    lines: list[str] = []
    first = run_spice(items, find_java(), jar_dir, tmp_path / "work", cache, log=lines.append)
    assert not any("parsed while scoring" in line for line in lines)  # the scorer found every parse in the cache
    assert (cache / "data.mdb").is_file() and not list((tmp_path / "work").iterdir())  # the run's temp files: gone
    again = run_spice(items[::-1], find_java(), jar_dir, tmp_path / "work", cache, workers=2, threads=1)
    assert again == first
    # One model, no caption repeated: one JVM parses (each caption once) and scores; the same numbers.
    lines.clear()
    alone = [item for item in items if item.key.startswith("alpha/")]
    direct = run_spice(alone, find_java(), jar_dir, tmp_path / "work", workers=1, log=lines.append)
    assert direct == {item.key: first[item.key] for item in alone}
    assert "SPICE: parsing 5 distinct captions and scoring 2 items (1 JVM" in lines[0]


def test_scoring_cli_writes_spice_equal_to_pycocoevalcap(jar_dir: Path, tmp_path: Path) -> None:
    """Through `python -m scoring score`: PTB tokenization (COCOEvalCap's), then SPICE, per sample and corpus."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # Without s6: PTB tokenization drops its full stops, and one 110-token sentence takes CoreNLP's parser long.
    used = ("s1", "s2", "s3", "s4", "s5")
    references = [REFERENCES[i] for i in used]
    rows = [(f"pano_{i}.jpg", "location", ref) for i, refs in enumerate(references) for ref in refs]
    data = write_quic_csv(tmp_path / "data.csv", rows)
    from contract import load_dataset

    samples = load_dataset(data).samples
    # alpha's: none is a copy of a reference (a "perfect" METEOR segment is another part's concern)
    candidates = [MODELS["alpha"][i] for i in used]
    predictions = tmp_path / "alpha_predictions.jsonl"
    predictions.write_text(
        "".join(
            PredictionRecord(
                sample_id=s.sample_id, image=s.image, query=s.query, prediction=c, references=s.references
            ).model_dump_json()
            + "\n"
            for s, c in zip(samples, candidates, strict=True)
        )  # fmt: skip
    )
    out = tmp_path / "results"
    command = [sys.executable, "-m", "scoring", "score", "--predictions", str(predictions), "--data", str(data)]
    command += ["--output-dir", str(out), "--spice-jars", str(jar_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, env=runner_env(), cwd=REPO_ROOT, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = read_json(out / "alpha_metrics.json", MetricsFile)
    rows_out = list(read_jsonl(out / SAMPLE_SCORES_JSONL.format(model="alpha"), SampleScores))

    gts = {s.sample_id: [{"caption": ref} for ref in s.references] for s in samples}
    res = {s.sample_id: [{"caption": c}] for s, c in zip(samples, candidates, strict=True)}
    tokenizer = PTBTokenizer()
    gts_tokens, res_tokens = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    with reference_spice(jar_dir, tmp_path / "reference") as spice:
        corpus, per_sample = spice.compute_score(gts_tokens, res_tokens)
    expected = dict(zip(sorted(gts_tokens), (scores["All"]["f"] for scores in per_sample), strict=True))
    assert {row.sample_id: row.scores["spice"] for row in rows_out} == expected
    assert metrics.metrics["spice"] == pytest.approx(corpus, abs=1e-15)  # the same values, summed in another order
    assert "spice" not in metrics.unavailable and metrics.ci["spice"] is not None


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry))
        except OSError:
            pass
    return found


def test_time_out_stops_every_jvm_and_says_how_to_fix_it(jar_dir: Path, tmp_path: Path) -> None:
    items = [SpiceItem(f"x{i}", MODELS["beta"][i], REFERENCES[i]) for i in REFERENCES]
    work = tmp_path / "timeout-work"
    with pytest.raises(SpiceTimeoutError, match=r"did not finish while parsing captions within 3 s .*--spice-timeout"):
        run_spice(items, find_java(), jar_dir, work, workers=2, threads=1, timeout=3)
    assert _processes_mentioning(str(work)) == []  # both parsing JVMs are gone
    assert not list(work.iterdir())


def test_heap_too_small_stops_the_run_and_says_it_is_memory(jar_dir: Path, tmp_path: Path) -> None:
    items = [SpiceItem("a", MODELS["beta"]["s1"], REFERENCES["s1"])]
    with pytest.raises(SpiceMemoryError, match=r"ran out of memory .*heap 256 MB.*--spice-heap") as raised:
        run_spice(items, find_java(), jar_dir, tmp_path / "work", heap_mb=256, timeout=600)
    assert "OutOfMemoryError" in str(raised.value)  # the JVM's own words


def test_jvm_failure_gives_its_stderr_and_the_fix(tmp_path: Path) -> None:
    """Jars of the right size that are not jars (sparse files): the JVM starts, then finds no CoreNLP class."""
    fake = tmp_path / "fake-jars"
    fake.mkdir()
    for pin in SPICE_JARS:
        with open(fake / pin.name, "wb") as handle:
            handle.truncate(pin.size)
    assert unavailable_reason(fake) is None  # the cheap check only looks at names and sizes
    with pytest.raises(SpiceJvmError, match=r"SPICE exited with status 1 while parsing and scoring \(a jar is damaged"):
        run_spice([SpiceItem("a", "a dog", ["a cat"])], find_java(), fake, tmp_path / "work", timeout=300)


def test_missing_or_damaged_jars_are_refused_before_any_jvm(tmp_path: Path) -> None:
    empty = tmp_path / "no-jars"
    with pytest.raises(SpiceUnavailableError, match=r"SPICE needs stanford-corenlp-3.6.0.jar, .* in .*fetch-spice"):
        check_spice(empty, memory_mb=1 << 20)
    with pytest.raises(SpiceUnavailableError, match=r"fetch-spice --dest"):
        run_spice([SpiceItem("a", "a dog", ["a cat"])], find_java(), empty, tmp_path / "work")
    partial = tmp_path / "partial"
    partial.mkdir()
    for pin in SPICE_JARS:
        (partial / pin.name).write_bytes(b"PK")
    assert f"has 2 bytes, not {SPICE_JARS[0].size} (damaged or a different version)" in str(unavailable_reason(partial))


def test_preflight_and_plan_refuse_a_machine_without_the_memory(tmp_path: Path) -> None:
    fake = tmp_path / "jars"
    fake.mkdir()
    for pin in SPICE_JARS:
        with open(fake / pin.name, "wb") as handle:
            handle.truncate(pin.size)
    check_spice(fake, find_java(), memory_mb=spice_memory_mb(1, 1))  # just enough
    with pytest.raises(SpiceMemoryError, match=r"needs at least \d+ MB .* leaves it 1000 MB .*more memory"):
        check_spice(fake, find_java(), memory_mb=1000)
    with pytest.raises(SpiceMemoryError, match=r"Slurm --mem, docker --memory"):
        plan_spice(["a dog"], threads=1, memory_mb=1000)


def test_heap_follows_the_longest_caption_and_threads_follow_the_memory() -> None:
    short, long_ = ["a dog on the grass"], [" ".join(["word"] * 200)]
    assert spice_heap_mb(5, 1) == 1792 and spice_heap_mb(5, 1) >= BASE_HEAP_MB
    # The parser's chart for a 200-token sentence: 201*202/2 spans x 12,977 states x 4 bytes = 1,005 MB per thread.
    assert spice_heap_mb(200, 1) >= BASE_HEAP_MB + 1005 and spice_heap_mb(200, 2) >= BASE_HEAP_MB + 2 * 1005
    assert plan_spice(short, cpus=4, memory_mb=1 << 20).threads == 4
    tight = plan_spice(long_, cpus=4, memory_mb=spice_heap_mb(200, 2) + JVM_OVERHEAD_MB)
    assert (tight.workers, tight.threads, tight.heap_mb) == (1, 2, spice_heap_mb(200, 2))
    assert plan_spice(short, workers=2, cpus=4, memory_mb=1 << 20).threads == 2
    # Default workers: a JVM per CPU for enough captions and memory; else fewer, their CPUs as threads.
    many = [f"caption number {n}" for n in range(1000)]
    assert (
        plan_spice(many, cpus=2, memory_mb=1 << 20).workers,
        plan_spice(many, cpus=2, memory_mb=1 << 20).threads,
    ) == (2, 1)
    assert plan_spice(many, cpus=8, memory_mb=1 << 20).workers == 5  # 200 captions per JVM at least
    one_jvm = plan_spice(many, cpus=2, memory_mb=spice_memory_mb(1, 2, 3))
    assert (one_jvm.workers, one_jvm.threads) == (1, 2)
    assert plan_spice(short, heap_mb=300, memory_mb=0).heap_mb == 300  # an explicit heap is the user's call
    assert "may use up to 2304 MB" in str(plan_spice(short, heap_mb=1904, memory_mb=0).note)


def _pin_for(path: Path, coordinates: str = "org.example:example:1.0") -> JarPin:
    return JarPin(path.name, coordinates, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)


def test_fetch_copies_verified_jars_atomically_and_refuses_a_wrong_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    good = source / "example-1.0.jar"
    good.write_bytes(b"PK\x03\x04 the real bytes")
    pin = _pin_for(good)
    dest = tmp_path / "dest"
    lines: list[str] = []
    assert fetch_spice_jars(dest, [source], network=False, pins=[pin], log=lines.append) == [dest / pin.name]
    assert (dest / pin.name).read_bytes() == good.read_bytes() and oct((dest / pin.name).stat().st_mode)[-3:] == "644"
    assert lines == [f"{pin.name}: copied from {source} (SHA-256 verified)"]
    fetch_spice_jars(dest, [], network=False, pins=[pin], log=lines.append)
    assert lines[-1] == f"{pin.name}: already in {dest} (SHA-256 verified)"

    # Same size, other bytes: not taken from the source, and the copy already in dest is replaced by nothing.
    (dest / pin.name).write_bytes(b"PK\x03\x04 the evil bytes")
    other = tmp_path / "other"
    other.mkdir()
    (other / pin.name).write_bytes(b"PK\x03\x04 the evil bytes")
    with pytest.raises(SpiceUnavailableError, match=r"not in .* nor in .*other.*network use is off"):
        fetch_spice_jars(dest, [other], network=False, pins=[pin], log=lines.append)
    assert sorted(path.name for path in dest.iterdir()) == [pin.name]  # no partial file left behind


def test_fetch_spice_cli_offline(tmp_path: Path, jar_dir: Path) -> None:
    """The real pins: a verified copy from a folder; offline without one, exit 2 with the fix."""
    env = {**runner_env(), "SCORING_SPICE_JARS": str(tmp_path / "unset"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    command = [sys.executable, "-m", "scoring", "fetch-spice", "--offline", "--dest", str(tmp_path / "dest")]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert refused.returncode == 2
    assert "network use is off: run `python -m scoring fetch-spice` on a host that reaches" in refused.stderr
    copied = subprocess.run(
        [*command, "--from", str(jar_dir)], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )
    assert copied.returncode == 0, copied.stderr
    assert unavailable_reason(tmp_path / "dest") is None
    assert copied.stdout.count("(SHA-256 verified)") == len(SPICE_JARS)


NETWORK = pytest.mark.skipif(
    os.environ.get("SCORING_TEST_NETWORK") != "1", reason="needs Maven Central (set SCORING_TEST_NETWORK=1)"
)


@NETWORK
@pytest.mark.skipif(not __import__("shutil").which("mvn"), reason="needs Maven (mvn) on PATH")
def test_fetch_with_maven_checks_the_pin(tmp_path: Path) -> None:
    pin = SPICE_JARS[-1]  # rhino-engine: 20 kB
    lines: list[str] = []
    fetch_spice_jars(tmp_path, [], pins=[pin], log=lines.append)
    assert lines[0] == f"{pin.name}: mvn dependency:copy -Dartifact={pin.coordinates}"
    assert hashlib.sha256((tmp_path / pin.name).read_bytes()).hexdigest() == pin.sha256


@NETWORK
def test_fetch_downloads_directly_without_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-mvn-here"))
    pin = SPICE_JARS[-1]
    lines: list[str] = []
    fetch_spice_jars(tmp_path / "dest", [], pins=[pin], log=lines.append)
    assert lines[0] == f"{pin.name}: downloading {pin.url}"
    assert hashlib.sha256((tmp_path / "dest" / pin.name).read_bytes()).hexdigest() == pin.sha256
