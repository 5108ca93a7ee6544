"""SPICE 1.0 (the jar pycocoevalcap ships) on Java 9+, with every distinct caption parsed once per scoring run.

pycocoevalcap's wrapper downloads Stanford CoreNLP into its package folder, writes its temp and cache files there
and runs `java -jar spice-1.0.jar` with an 8 GB heap. On Java 15+ that jar cannot write its output at all: it
pretty-prints the JSON with the JDK's JavaScript engine, which Java 15 removed. Here:

- the jars (CoreNLP 3.6.0 and its models, plus Mozilla Rhino as the JavaScript engine the jar asks for) come from
  a folder: `--spice-jars DIR`, $SCORING_SPICE_JARS, or the user cache that `python -m scoring fetch-spice` fills;
  each is pinned by SHA-256;
- the JVM gets the module openings SPICE's parse cache (fst + lmdbjni) needs, an English locale, UTF-8, a temp
  folder of ours, and a heap sized from the longest caption (the parser's chart grows with the square of the
  sentence length); the first out-of-memory stops the run with an error that says so;
- distinct captions are parsed first, once each, by one or more JVMs into one parse cache (LMDB), then one JVM
  scores every item from that cache. The scores are SPICE's own: same jar, same parses, same matching.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scoring.java import (
    JVM_LOCALE_FLAGS,
    ScoringError,
    ToolProcessError,
    java_version,
    spice_jar,
    spice_lib_dir,
    stderr_tail,
)

# ---------------------------------------------------------------------------------------------------- the jars


@dataclass(frozen=True)
class JarPin:
    name: str  # file name, as Maven names it
    coordinates: str  # groupId:artifactId:version[:type:classifier] for `mvn dependency:copy -Dartifact=`
    sha256: str
    size: int  # bytes; the cheap check before every run (the SHA-256 is checked when a jar is fetched or copied)

    @property
    def url(self) -> str:
        group, artifact, version = self.coordinates.split(":")[:3]
        return f"{MAVEN_CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{self.name}"


CORENLP_VERSION = "3.6.0"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
SPICE_JARS = (
    JarPin(
        f"stanford-corenlp-{CORENLP_VERSION}.jar",
        f"edu.stanford.nlp:stanford-corenlp:{CORENLP_VERSION}",
        "d341d5863276f55782c5ef73212222d6b3b48e02ae1951ab6de7618d28b12742",
        7_270_741,
    ),
    JarPin(
        f"stanford-corenlp-{CORENLP_VERSION}-models.jar",
        f"edu.stanford.nlp:stanford-corenlp:{CORENLP_VERSION}:jar:models",
        "d285157bd7887ee3018094b5dbae092e49088b023361ccdb550ee1daf9b2c9bd",
        378_116_526,
    ),
    # SpiceScorer writes its JSON through the "JavaScript" scripting engine, which the JDK dropped in Java 15.
    JarPin(
        "rhino-1.7.14.jar",
        "org.mozilla:rhino:1.7.14",
        "c9290b0d801bf0dbbbc44338e0f769b7650a0c5d04e6bb1aeb85775c0211b003",
        1_383_644,
    ),
    JarPin(
        "rhino-engine-1.7.14.jar",
        "org.mozilla:rhino-engine:1.7.14",
        "961ed9bb342419d6cbf9a2064508c359e9a25cd636182030584b1b742c3f9928",
        19_597,
    ),
)
CORENLP_JARS = tuple(pin.name for pin in SPICE_JARS[:2])
PINNED_SHA256 = {pin.name: pin.sha256 for pin in SPICE_JARS}

# ------------------------------------------------------------------------------------------------ the JVM, sized

SPICE_MAIN_CLASS = "edu.anu.spice.SpiceScorer"
# SPICE's parse cache serialises with fst and lmdbjni, which reach into these packages (Java 9+).
ADD_OPENS = tuple(
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in ("java.lang", "java.util", "java.math", "java.util.concurrent", "java.net", "java.text")
)
# Heap with CoreNLP's parser, lemmatiser and three NER models loaded: 512 MB fails while loading, 1 GB parses
# short captions (measured, docs/SCORING.md); the margin keeps the garbage collector out of the way.
BASE_HEAP_MB = 1536
# englishPCFG's chart: one float per grammar state (12,977) for each span of an n-token sentence, n(n+1)/2 spans,
# allocated per sentence by each parsing thread (the parser's ExhaustivePCFGParser.createArrays).
PCFG_STATES = 12_977
CHART_MARGIN = 1.5
# Resident memory of a SPICE JVM beyond its -Xmx (metaspace, code, thread stacks, lmdbjni), measured.
JVM_OVERHEAD_MB = 400
# What the memory figures assume when the captions are not known yet (a job request, the preflight): QuIC-360's
# longest caption is 70 tokens after PTB tokenization (median 18); model output is often longer.
TYPICAL_MAX_TOKENS = 100
# Memory the rest of a scoring process needs next to SPICE (METEOR's JVM with its 2 GB heap, Python).
OTHER_SCORING_MB = 3072
# LMDB keys are at most 511 bytes: a caption whose serialised key is longer cannot be cached, and SpiceScorer parses
# it again wherever it occurs. fst writes a char below U+00FF in one byte, others in three, plus a short header:
# measured, a 505-character ASCII caption is cached and a 510-character one is not.
CACHE_KEY_LIMIT = 500
# A parsing JVM spends about 20 CPU-seconds loading CoreNLP's models, what parsing 100 QuIC-360 captions costs.
CAPTIONS_PER_WORKER = 200


def spice_heap_mb(max_tokens: int, threads: int) -> int:
    """-Xmx (MB) for a SPICE JVM whose `threads` parsing threads may each parse a `max_tokens`-token caption."""
    cells = (max_tokens + 2) * (max_tokens + 3) // 2
    chart_mb = cells * PCFG_STATES * 4 / 2**20
    heap = BASE_HEAP_MB + threads * chart_mb * CHART_MARGIN
    return int(math.ceil(heap / 256) * 256)


def spice_memory_mb(workers: int = 1, threads: int = 1, max_tokens: int = TYPICAL_MAX_TOKENS) -> int:
    """Peak resident memory (MB) of SPICE: `workers` JVMs of `threads` parsing threads each (the scoring JVM that
    follows them needs no more than one of them)."""
    return workers * (spice_heap_mb(max_tokens, threads) + JVM_OVERHEAD_MB)


def available_cpus() -> int:
    """CPUs this process may use: affinity, cgroup quota and Slurm's allocation, whichever is smallest."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit():
        cpus = min(cpus, int(slurm))
    return max(1, cpus)


def memory_limit_mb() -> int | None:
    """The hard memory limit of this process's container or job (cgroup, Slurm allocation), or None without one.
    The scoring process is meant to own it: a container's --memory, a Slurm job's --mem."""
    limits = []
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                limits.append(int(limit) // 2**20)
        except (OSError, ValueError):
            pass
    per_node, per_cpu = os.environ.get("SLURM_MEM_PER_NODE", ""), os.environ.get("SLURM_MEM_PER_CPU", "")
    if per_node.isdigit():
        limits.append(int(per_node))
    elif per_cpu.isdigit():
        limits.append(int(per_cpu) * available_cpus())
    return min(limits) if limits else None


def available_memory_mb() -> int | None:
    """Memory the machine has available now (MemAvailable): a momentary figure, so it lowers the number of parsing
    threads and adds a note to the plan, but never stops a run."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class SpicePlan:
    """How SPICE runs: `workers` parsing JVMs of `threads` threads each, every one with `heap_mb`."""

    workers: int
    threads: int
    heap_mb: int
    max_tokens: int
    note: str | None = None  # e.g. the machine has less memory available right now than the plan may use

    @property
    def memory_mb(self) -> int:
        return self.workers * (self.heap_mb + JVM_OVERHEAD_MB)

    def describe(self) -> str:
        jvms = "1 JVM" if self.workers == 1 else f"{self.workers} JVMs"
        threads = "1 thread" if self.threads == 1 else f"{self.threads} threads"
        return f"{jvms} x {threads}, heap {self.heap_mb} MB each (longest caption {self.max_tokens} tokens)"


def caption_tokens(caption: str) -> int:
    return len(caption.split())


def cacheable(caption: str) -> bool:
    """Whether SPICE's parse cache can hold this caption (else it is parsed wherever it occurs)."""
    utf16 = caption.encode("utf-16-le")
    units = (int.from_bytes(utf16[i : i + 2], "little") for i in range(0, len(utf16), 2))
    return sum(1 if unit < 0xFF else 3 for unit in units) <= CACHE_KEY_LIMIT


def _memory_budgets(memory_mb: int | None) -> tuple[int | None, int | None]:
    """(hard, soft) memory for SPICE in MB: a limit that kills when exceeded, and what is available now."""
    if memory_mb is not None:
        return memory_mb, memory_mb
    hard, available = memory_limit_mb(), available_memory_mb()
    return (
        None if hard is None else hard - OTHER_SCORING_MB,
        None if available is None else available - OTHER_SCORING_MB,
    )


def plan_spice(
    captions: Iterable[str],
    *,
    workers: int | None = None,
    threads: int | None = None,
    heap_mb: int | None = None,
    cpus: int | None = None,
    memory_mb: int | None = None,
) -> SpicePlan:
    """Workers, threads and heap for these captions on this machine.

    Default: one single-threaded JVM per CPU, as many as the memory holds and at most one per
    CAPTIONS_PER_WORKER captions (each JVM loads CoreNLP's models again, about 20 CPU-seconds and 1.5 GB); the
    CPUs left over become parsing threads. Measured on 2 CPUs (docs/SCORING.md): two 1-thread JVMs parsed 1,000
    QuIC-360 captions faster than one 2-thread JVM. `memory_mb` is what SPICE may use (default: the container's
    or job's limit minus OTHER_SCORING_MB); a plan over that limit is an error before any JVM starts, a plan over
    what the machine has available right now only gets a note.
    """
    captions = list(captions)
    max_tokens = max((caption_tokens(caption) for caption in captions), default=1)
    cpus = cpus or available_cpus()
    hard, soft = _memory_budgets(memory_mb)
    target = min((budget for budget in (hard, soft) if budget is not None), default=None)
    if workers is None:
        workers = max(1, min(cpus, len(captions) // CAPTIONS_PER_WORKER))
        single = spice_heap_mb(max_tokens, 1) + JVM_OVERHEAD_MB
        if target is not None:
            workers = max(1, min(workers, target // single))
    if threads is None:
        threads = max(1, cpus // workers)
        while (
            target is not None
            and threads > 1
            and workers * (spice_heap_mb(max_tokens, threads) + JVM_OVERHEAD_MB) > target
        ):
            threads -= 1
    plan = SpicePlan(workers, threads, heap_mb or spice_heap_mb(max_tokens, threads), max_tokens)
    if heap_mb is None and hard is not None and plan.memory_mb > hard:
        raise SpiceMemoryError(
            f"SPICE needs about {plan.memory_mb} MB ({plan.describe()}) but the limit leaves it {max(hard, 0)} MB "
            f"({OTHER_SCORING_MB} MB kept for METEOR and Python). Give the scoring step more memory (Slurm "
            f"--mem, docker --memory), or leave SPICE out deliberately"
        )
    if soft is not None and plan.memory_mb > soft:
        note = f"this machine has {max(soft, 0)} MB available for SPICE now; it may use up to {plan.memory_mb} MB"
        plan = SpicePlan(plan.workers, plan.threads, plan.heap_mb, plan.max_tokens, note)
    return plan


# ---------------------------------------------------------------------------------------------------- errors


class SpiceUnavailableError(ScoringError):
    """SPICE cannot start here: jars missing or damaged, or no usable Java. The message says how to fix it."""


class SpiceJvmError(ToolProcessError):
    """A SPICE JVM failed; the message ends with its stderr tail."""


class SpiceMemoryError(SpiceJvmError):
    """SPICE's heap (or the machine) is too small for these captions."""


class SpiceTimeoutError(SpiceJvmError):
    """SPICE did not finish in the time it was given."""


# ------------------------------------------------------------------------------------------------ jar locations


def default_jar_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vlm-ablation" / "spice"


def configured_jar_dir(option: str | Path | None) -> Path:
    if option is not None:
        return Path(option)
    from_env = os.environ.get("SCORING_SPICE_JARS")
    return Path(from_env) if from_env else default_jar_dir()


def missing_jars(jar_dir: Path) -> list[str]:
    return [pin.name for pin in SPICE_JARS if not (jar_dir / pin.name).is_file()]


def unavailable_reason(jar_dir: Path) -> str | None:
    """Why SPICE cannot run with this jar folder (missing or truncated jars), or None when it can."""
    fix = f"run `python -m scoring fetch-spice --dest {jar_dir}` (Maven Central), or pass --spice-jars DIR"
    missing = missing_jars(jar_dir)
    if missing:
        return f"SPICE needs {', '.join(missing)} in {jar_dir}: {fix}"
    for pin in SPICE_JARS:
        size = (jar_dir / pin.name).stat().st_size
        if size != pin.size:
            return f"{jar_dir / pin.name} has {size} bytes, not {pin.size} (damaged or a different version): {fix}"
    return None


def java_major(java: str) -> int:
    """17 for 'openjdk version "17.0.15"', 8 for '"1.8.0_392"'; 0 when unknown."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', java_version(java))
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _check_installed(jar_dir: Path, java: str | None) -> None:
    reason = unavailable_reason(jar_dir)
    if reason:
        raise SpiceUnavailableError(reason)
    if not spice_jar().is_file() or not spice_lib_dir().is_dir():
        raise SpiceUnavailableError(f"{spice_jar()} not found: reinstall pycocoevalcap==1.2")
    if java is not None and java_major(java) == 0:
        raise SpiceUnavailableError(f"{java} -version does not say which Java it is: {java_version(java)!r}")


def check_spice(jar_dir: Path, java: str | None = None, memory_mb: int | None = None) -> None:
    """Cheap preflight, before any model runs: the jars are there with their pinned sizes, pycocoevalcap's SPICE
    jar is installed, Java answers, and one single-threaded SPICE JVM fits in the memory SPICE may use (`memory_mb`,
    default: the container's or job's limit minus OTHER_SCORING_MB). Raises a ScoringError that says the fix."""
    _check_installed(jar_dir, java)
    hard, _ = _memory_budgets(memory_mb)
    needed = spice_memory_mb(1, 1, TYPICAL_MAX_TOKENS)
    if hard is not None and needed > hard:
        raise SpiceMemoryError(
            f"SPICE needs at least {needed} MB for one parsing JVM but the limit leaves it {max(hard, 0)} MB "
            f"({OTHER_SCORING_MB} MB kept for METEOR and Python): give the scoring step more memory (Slurm --mem, "
            f"docker --memory), or leave SPICE out deliberately"
        )


def spice_classpath(jar_dir: Path) -> list[Path]:
    return [spice_jar(), *(jar_dir / pin.name for pin in SPICE_JARS), *sorted(spice_lib_dir().glob("*.jar"))]


def jvm_command(java: str, jar_dir: Path, heap_mb: int, temp_dir: Path) -> list[str]:
    """`java ... SpiceScorer` without SpiceScorer's own arguments."""
    opens = ADD_OPENS if java_major(java) >= 9 else ()
    return [
        java,
        f"-Xmx{heap_mb}m",
        # CoreNLP catches an out-of-memory in its parser and carries on with a flat tree, on which SPICE then dies
        # (a NullPointerException) after all the parsing: stop at the first one, and say it was memory.
        "-XX:+ExitOnOutOfMemoryError",
        *JVM_LOCALE_FLAGS,
        *opens,
        f"-Djava.io.tmpdir={temp_dir}",  # lmdbjni unpacks its native library there
        "-cp",
        os.pathsep.join(str(path) for path in spice_classpath(jar_dir)),
        SPICE_MAIN_CLASS,
    ]


# ------------------------------------------------------------------------------------------------ running SPICE


@dataclass
class SpiceItem:
    key: str
    hypothesis: str
    references: list[str]


# CoreNLP's words when a parse failed, each followed by the flat-tree fallback that changes SPICE.
_PARSE_FAILURES = ("Parsing of sentence ran out of memory", "Parsing of sentence failed")


class _Jvm:
    """One SpiceScorer process, its output in files (several run at once; pipes would fill)."""

    def __init__(self, command: list[str], folder: Path, name: str) -> None:
        self.name = name
        self.stdout = folder / f"{name}.stdout"
        self.stderr = folder / f"{name}.stderr"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            # In our process group: whoever stops the scoring step's group (an orchestrator) stops them too.
            self.process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=folder)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # a SpiceScorer JVM starts no process of its own
            self.process.wait()

    def stderr_text(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")


def _wait(jvms: Sequence[_Jvm], deadline: float | None, timeout: float | None, what: str, plan: SpicePlan) -> None:
    """Until every JVM has ended; the first failure (or the deadline) stops the others."""
    try:
        while any(jvm.process.poll() is None for jvm in jvms):
            if any(jvm.process.returncode not in (None, 0) for jvm in jvms):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise SpiceTimeoutError(
                    f"SPICE did not finish {what} within {timeout:.0f} s ({plan.describe()}): give it more time "
                    f"(--spice-timeout), more CPUs, or leave SPICE out deliberately"
                )
            time.sleep(0.2)
    finally:
        ended = [jvm for jvm in jvms if jvm.process.poll() is not None]
        for jvm in jvms:
            jvm.kill()
    for jvm in ended:  # not the ones stopped here
        _check_exit(jvm, what, plan)


def _check_exit(jvm: _Jvm, what: str, plan: SpicePlan) -> None:
    code = jvm.process.returncode
    stderr = jvm.stderr_text()
    # -XX:+ExitOnOutOfMemoryError says "Terminating due to java.lang.OutOfMemoryError" on stdout, then exits 3.
    stdout = jvm.stdout.read_text(encoding="utf-8", errors="replace")
    memory = "OutOfMemoryError" in stderr + stdout or any(failure in stderr for failure in _PARSE_FAILURES)
    if "OutOfMemoryError" in stdout:
        stderr += "\n" + stdout.strip().splitlines()[-1]
    if memory:
        raise SpiceMemoryError(
            f"SPICE ran out of memory {what} ({plan.describe()}): raise its heap (--spice-heap MB), run fewer "
            f"parsing threads (--spice-workers / fewer CPUs), or give the scoring step more memory:\n"
            f"{stderr_tail(stderr)}"
        )
    if code != 0:
        hint = ""
        if "NoClassDefFoundError" in stderr or "ClassNotFoundException" in stderr:
            hint = " (a jar is damaged or missing: `python -m scoring fetch-spice` checks and replaces them)"
        raise SpiceJvmError(f"SPICE exited with status {code} {what}{hint}:\n{stderr_tail(stderr)}")


def _balanced(captions: Sequence[str], parts: int) -> list[list[str]]:
    """Captions split into `parts` chunks of about equal parsing cost (cubic in the length), longest first."""
    chunks: list[list[str]] = [[] for _ in range(parts)]
    loads = [0.0] * parts
    for caption in sorted(captions, key=caption_tokens, reverse=True):
        lightest = loads.index(min(loads))
        chunks[lightest].append(caption)
        loads[lightest] += (caption_tokens(caption) + 1) ** 3
    return [chunk for chunk in chunks if chunk]


def _write_json(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload), encoding="ascii")  # \u escapes: no charset question on the Java side
    return path


def _f_score(value: object) -> float:
    """As pycocoevalcap's `Spice.float_convert`: a number, or NaN (SPICE writes NaN as null)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def run_spice(
    items: Sequence[SpiceItem],
    java: str,
    jar_dir: Path,
    work_dir: Path,
    cache_dir: Path | None = None,
    *,
    workers: int | None = None,
    threads: int | None = None,
    heap_mb: int | None = None,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """SPICE F-score (the 'All' category, what pycocoevalcap reports) of every item, keyed by `item.key`.

    Each distinct caption (hypotheses and references of all items, so all models of a run) is parsed once, by
    `workers` JVMs of `threads` threads, into the parse cache `cache_dir` (kept) or a folder under `work_dir`
    (removed); then one JVM scores every item from that cache (one JVM does both when no caption repeats). NaN
    where SPICE gives no number, as pycocoevalcap.
    """
    say = log or (lambda _line: None)
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("SPICE item keys must be unique")
    for item in items:
        if not item.references:
            raise ValueError(f"SPICE item {item.key!r} has no reference")
    if not items:
        return {}
    _check_installed(jar_dir, java)
    captions = list(dict.fromkeys([*(r for item in items for r in item.references), *(i.hypothesis for i in items)]))
    plan = plan_spice(captions, workers=workers, threads=threads, heap_mb=heap_mb)
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spice_", dir=work_dir) as temp_name:
        temp = Path(temp_name)
        cache = cache_dir if cache_dir is not None else temp / "parse-cache"
        cache.mkdir(parents=True, exist_ok=True)
        command = jvm_command(java, jar_dir, plan.heap_mb, temp)
        if plan.note:
            say(f"SPICE: note: {plan.note}")
        # SpiceScorer parses all references in one batch (caching them), then all candidates (finding those equal
        # to a reference in the cache): with one JVM and no caption repeated within either batch, it parses each
        # caption once by itself. Otherwise (several models share the references, several JVMs) parse first.
        references = [reference for item in items for reference in item.references]
        hypotheses = [item.hypothesis for item in items]
        parse_first = plan.workers > 1 or len(set(references)) < len(references) or len(set(hypotheses)) < len(items)
        if parse_first:
            # 1. Parse: each cacheable distinct caption once, as the candidate of an item without references.
            to_parse = [caption for caption in captions if cacheable(caption)]
            say(f"SPICE: parsing {len(to_parse)} distinct captions ({plan.describe()})")
            jvms = []
            try:
                for index, chunk in enumerate(_balanced(to_parse, plan.workers)):
                    parse_input = _write_json(
                        temp / f"parse_{index}.json",
                        [{"image_id": str(n), "test": caption, "refs": []} for n, caption in enumerate(chunk)],
                    )
                    arguments = [str(parse_input), "-cache", str(cache), "-threads", str(plan.threads), "-silent"]
                    jvms.append(_Jvm(command + arguments, temp, f"parse_{index}"))
            finally:
                _wait(jvms, deadline, timeout, "while parsing captions", plan)
            # 2. Score every item from the cache (a caption too long for the cache is parsed here, as SpiceScorer
            # does it).
            say(f"SPICE: parsed in {time.monotonic() - started:.0f} s; scoring {len(items)} items")
        else:
            say(f"SPICE: parsing {len(captions)} distinct captions and scoring {len(items)} items ({plan.describe()})")
        score_input = _write_json(
            temp / "score.json",
            [{"image_id": item.key, "test": item.hypothesis, "refs": item.references} for item in items],
        )
        output = temp / "score_output.json"
        arguments = [str(score_input), "-cache", str(cache), "-out", str(output), "-threads", str(plan.threads)]
        scorer = _Jvm(command + [*arguments, "-silent"], temp, "score")
        _wait([scorer], deadline, timeout, "while scoring" if parse_first else "while parsing and scoring", plan)
        try:
            results = json.loads(output.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            message = f"SPICE wrote no readable output ({error}):\n{stderr_tail(scorer.stderr_text())}"
            raise SpiceJvmError(message) from None
        if parse_first and "Initiating Stanford parsing pipeline" in scorer.stderr_text():
            say("SPICE: captions too long for the parse cache were parsed while scoring")
        say(f"SPICE: done in {time.monotonic() - started:.0f} s")
    scores = {str(result["image_id"]): _f_score(result.get("scores", {}).get("All", {}).get("f")) for result in results}
    missing = [key for key in keys if key not in scores]
    if missing:
        raise SpiceJvmError(f"SPICE returned no score for {len(missing)} items (first: {missing[0]})")
    return {key: scores[key] for key in keys}


# --------------------------------------------------------------------------------------------- fetching the jars


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, pin: JarPin) -> bool:
    return path.is_file() and path.stat().st_size == pin.size and _sha256(path) == pin.sha256


def _install(candidate: Path, pin: JarPin, dest: Path, origin: str) -> Path:
    """Check a candidate file against its pin and move it into dest atomically (it is removed either way)."""
    actual = _sha256(candidate)
    if actual != pin.sha256:
        candidate.unlink(missing_ok=True)
        raise SpiceUnavailableError(f"{pin.name} from {origin}: SHA-256 {actual} is not the pinned {pin.sha256}")
    target = dest / pin.name
    if candidate.stat().st_mode & 0o444 != 0o444:  # mkstemp made it private; whoever scores must read it
        os.chmod(candidate, 0o644)
    os.replace(candidate, target)
    return target


def _copy_in(source: Path, pin: JarPin, dest: Path) -> Path:
    """A hard link where the file system allows (no second copy of 378 MB), else a copy; verified either way."""
    temp = dest / f".{pin.name}.{os.getpid()}.part"
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
        return _install(temp, pin, dest, str(source))
    finally:
        temp.unlink(missing_ok=True)


def _maven(pin: JarPin, dest: Path, mvn: str, log: Callable[[str], None]) -> Path:
    log(f"{pin.name}: mvn dependency:copy -Dartifact={pin.coordinates}")
    with tempfile.TemporaryDirectory(prefix=".maven-", dir=dest) as folder:
        command = [mvn, "-q", "-B", "--strict-checksums", "dependency:copy"]
        command += [f"-Dartifact={pin.coordinates}", f"-DoutputDirectory={folder}"]
        completed = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        copied = Path(folder) / pin.name
        if completed.returncode != 0 or not copied.is_file():
            output = (completed.stdout or "") + (completed.stderr or "")
            raise SpiceUnavailableError(f"mvn exited with status {completed.returncode}:\n{stderr_tail(output, 10)}")
        return _install(copied, pin, dest, f"Maven ({pin.coordinates})")


def _download(pin: JarPin, dest: Path, timeout: float, log: Callable[[str], None]) -> Path:
    fd, temp_name = tempfile.mkstemp(prefix=f".{pin.name}.", suffix=".part", dir=dest)
    temp = Path(temp_name)
    interactive = sys.stdout.isatty()
    try:
        with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(pin.url, timeout=timeout) as response:
            done, shown = 0, -1
            for chunk in iter(lambda: response.read(1 << 20), b""):
                handle.write(chunk)
                done += len(chunk)
                percent = 100 * done // pin.size
                if interactive or percent // 25 > shown // 25:
                    line = f"{pin.name}: {done / 2**20:.0f} / {pin.size / 2**20:.0f} MB ({min(percent, 100)}%)"
                    print(line, end="\r" if interactive else "\n", flush=True)
                    shown = percent
        if interactive:
            print(flush=True)
        return _install(temp, pin, dest, pin.url)
    finally:
        temp.unlink(missing_ok=True)


def fetch_spice_jars(
    dest: Path,
    sources: Sequence[Path] = (),
    network: bool = True,
    timeout: float = 120.0,
    log: Callable[[str], None] = print,
    pins: Sequence[JarPin] = SPICE_JARS,
) -> list[Path]:
    """Every SPICE jar into `dest`, each checked against its pinned SHA-256 and written atomically.

    Where each comes from, in this order: `dest` itself when it already holds the verified jar; a verified copy in
    one of `sources` (no network); Maven's own client (`mvn dependency:copy`) when `mvn` is on PATH; a direct
    HTTPS download from Maven Central. `network=False` stops after the local folders.
    """
    dest.mkdir(parents=True, exist_ok=True)
    mvn = shutil.which("mvn") if network else None
    written = []
    for pin in pins:
        target = dest / pin.name
        if _verified(target, pin):
            log(f"{pin.name}: already in {dest} (SHA-256 verified)")
            written.append(target)
            continue
        found = next((s / pin.name for s in sources if (s / pin.name).resolve() != target.resolve() and
                      _verified(s / pin.name, pin)), None)  # fmt: skip
        if found is not None:
            written.append(_copy_in(found, pin, dest))
            log(f"{pin.name}: copied from {found.parent} (SHA-256 verified)")
            continue
        if not network:
            where = ", ".join(str(source) for source in sources) or "no source folder"
            raise SpiceUnavailableError(
                f"{pin.name} is not in {dest} nor in {where}, and network use is off: run "
                f"`python -m scoring fetch-spice` on a host that reaches Maven Central, then copy {dest}"
            )
        failures = []
        if mvn:
            try:
                written.append(_maven(pin, dest, mvn, log))
                log(f"{pin.name}: {target} (SHA-256 verified)")
                continue
            except SpiceUnavailableError as error:
                failures.append(f"Maven: {error}")
        try:
            log(f"{pin.name}: downloading {pin.url}")
            written.append(_download(pin, dest, timeout, log))
            log(f"{pin.name}: {target} (SHA-256 verified)")
        except (urllib.error.URLError, TimeoutError, OSError, SpiceUnavailableError) as error:
            failures.append(f"{pin.url}: {error}")
            raise SpiceUnavailableError(
                f"could not get {pin.name} (this needs Maven Central):\n  " + "\n  ".join(failures)
            ) from error
    return written
