"""A real single-node Slurm cluster in one folder, for the tests and for people: munged, slurmctld and slurmd as
root, no systemd, no accounting, N fake GPUs.

By hand:
    python tests/slurm_cluster.py start DIR [--gpus 2]    # prints the SLURM_CONF to export
    SLURM_CONF=DIR/etc/slurm.conf sbatch --wrap 'nvidia-smi || echo $CUDA_VISIBLE_DEVICES'
    python tests/slurm_cluster.py stop DIR                # TERM by pid file, then KILL; also the jobs' processes

From pytest: the session fixture ``slurm_cluster`` (a ``SlurmTestCluster``: ``env`` with SLURM_CONF, ``node``,
``gpus``, ``cpus``), registered by ``from slurm_cluster import slurm_cluster_fixture`` (in tests/conftest.py or a
test module; one cluster per session however many do). It skips with the reason when the Slurm/munge binaries are
missing or the tests do not run as root, and fails instead when VLM_ABLATION_REQUIRE_SLURM=1 (CI), so a missing
cluster can never pass as a green run.

What the configuration has to say, and why (measured with Debian bookworm's Slurm 22.05):
- munged runs as root with its own key, socket and pid file here (``AuthInfo=socket=...``), so no /run/munge and
  no munge user; ``--force`` because pytest's temporary folders are mode 0700 (all clients here are root).
- ``SelectType=select/cons_tres`` with ``CR_Core_Memory`` AND a ``DefMemPerCPU``: without it every job takes the
  whole node's memory and jobs run one at a time.
- ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, ``JobAcctGatherParams=OverMemoryKill``: cgroup
  v2 device constraints fail in this sandbox; memory limits are enforced by polling.
- ``SchedulerParameters=kill_invalid_depend,batch_sched_delay=0``: submit-to-start ~1 s (the default delay made a
  20-task array take 52 s instead of 11 s), and a dependency that can never be met cancels the job.
- Fake GPUs: gres.conf ``AutoDetect=off`` and one ``File=`` per GPU, each a distinct symlink to /dev/null (the same
  file twice makes slurmd exit; plain files give no CUDA_VISIBLE_DEVICES; a Count-only line makes the node INVAL).
- Ports are picked free at start, so several clusters (several engineers, a test of this module) can coexist.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import pytest
except ImportError:  # the command line works without pytest (e.g. the system python3)
    pytest = None  # type: ignore[assignment]

REQUIRE_SLURM = os.environ.get("VLM_ABLATION_REQUIRE_SLURM") == "1"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
STATE_FILE = "cluster.json"
# Marks the daemons' environment; slurmstepd inherits it from slurmd, so stop() finds every process of a cluster.
MARKER_VARIABLE = "VLM_ABLATION_SLURM_TEST_CLUSTER"
# A Unix socket path holds at most 107 bytes; slurmd puts one per job step in its spool folder.
MAX_SOCKET_PATH = 107


class ClusterError(RuntimeError):
    """The test cluster could not start (the message carries the daemons' log tails)."""


@dataclass(frozen=True)
class SlurmTestCluster:
    folder: Path
    conf: Path
    node: str
    gpus: int
    cpus: int
    real_memory_mb: int
    def_mem_per_cpu_mb: int
    controller_port: int
    slurmd_port: int

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with SLURM_CONF pointing at the cluster: what a client needs."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def log(self, daemon: str) -> Path:
        return self.folder / "log" / f"{daemon}.log"


def missing_requirements() -> str | None:
    """Why no cluster can start here, or None."""
    absent = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=_sbin_path()) is None]
    if absent:
        return (
            f"Slurm/munge binaries not found: {', '.join(absent)} "
            "(Debian: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge)"
        )
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root (SlurmUser=root); these tests do not run as root"
    return None


def _sbin_path() -> str:
    # The daemons live in /usr/sbin, which a non-login PATH may lack.
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(parts + [p for p in ("/usr/sbin", "/sbin", "/usr/local/sbin") if p not in parts])


def _binary(name: str) -> str:
    found = shutil.which(name, path=_sbin_path())
    if found is None:
        raise ClusterError(missing_requirements() or f"{name} not found")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_memory_mb() -> int:
    """RealMemory as slurmd itself measures it (`slurmd -C`); the node is configured below it."""
    done = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, timeout=30)
    found = re.search(r"RealMemory=(\d+)", done.stdout)
    if not found:
        raise ClusterError(f"`slurmd -C` printed no RealMemory: {done.stdout.strip()} {done.stderr.strip()}")
    return int(found.group(1))


def _layout(folder: Path) -> dict[str, Path]:
    return {
        "etc": folder / "etc",
        "munge": folder / "munge",
        "gpus": folder / "gpus",
        "state": folder / "state",
        "spool": folder / "spool",
        "log": folder / "log",
        "run": folder / "run",
    }


def _pid_files(folder: Path) -> dict[str, Path]:
    return {
        "slurmd": folder / "run" / "slurmd.pid",
        "slurmctld": folder / "run" / "slurmctld.pid",
        "munged": folder / "munge" / "munged.pid",
    }


def _write_configuration(
    folder: Path, node: str, gpus: int, cpus: int, real_memory: int, def_mem: int, ports: list[int], min_job_age: int
) -> Path:
    paths = _layout(folder)
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    paths["munge"].chmod(0o755)  # munged wants its socket's folder searchable by all
    key = paths["munge"] / "munge.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    for index in range(gpus):
        device = paths["gpus"] / f"nvidia{index}"
        if not device.is_symlink():
            device.symlink_to("/dev/null")
    controller_host = socket.gethostname().split(".")[0]
    conf = paths["etc"] / "slurm.conf"
    (paths["etc"] / "plugstack.conf").write_text("")  # no site SPANK plugins (e.g. pyxis) in the test cluster
    conf.write_text(
        f"""# Written by tests/slurm_cluster.py: a single-node test cluster in {folder}
ClusterName=vlmtest
SlurmctldHost={controller_host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={paths["munge"] / "munge.socket"}
StateSaveLocation={paths["state"]}
SlurmdSpoolDir={paths["spool"]}
SlurmctldPidFile={paths["run"] / "slurmctld.pid"}
SlurmdPidFile={paths["run"] / "slurmd.pid"}
SlurmctldLogFile={paths["log"] / "slurmctld.log"}
SlurmdLogFile={paths["log"] / "slurmd.log"}
PlugStackConfig={paths["etc"] / "plugstack.conf"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={def_mem}
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=5
SchedulerParameters=kill_invalid_depend,batch_sched_delay=0
ReturnToService=2
KillWait=5
MinJobAge={min_job_age}
MpiDefault=none
MailProg=/bin/true
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    gres_lines = ["AutoDetect=off"]
    gres_lines += [f"NodeName={node} Name=gpu File={paths['gpus'] / f'nvidia{i}'}" for i in range(gpus)]
    (paths["etc"] / "gres.conf").write_text("\n".join(gres_lines) + "\n")
    return conf


def _daemon_env(folder: Path, conf: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env.update(SLURM_CONF=str(conf), PATH=_sbin_path(), **{MARKER_VARIABLE: str(folder.resolve())})
    return env


def _launch(argv: list[str], env: dict[str, str], log: Path) -> None:
    """Run a daemon's start command (it forks into the background itself and writes its pid file)."""
    with open(log, "ab") as stderr:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, timeout=60)
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} exited with {done.returncode}")


def _wait_for(what: str, predicate, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} within {timeout:g} s")
        time.sleep(0.1)


def _client(argv: list[str], conf: Path, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout} s")


def _log_tails(folder: Path, lines: int = 15) -> str:
    parts = []
    for path in sorted((folder / "log").glob("*")) + [folder / "munge" / "munged.log"]:
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(tail))
    return "\n".join(parts)


def _run_first_job(conf: Path, timeout: float) -> None:
    """Ready means a job really runs (credentials, launch, the controller's first scheduling pass, which comes a few
    seconds after its start); later jobs then start in about a second."""
    submitted = _client(["sbatch", "--parsable", "--job-name=first-job", "--output=/dev/null", "--wrap=true"], conf)
    if submitted.returncode != 0:
        raise ClusterError(f"sbatch of a first job failed: {submitted.stderr.strip()}")
    job = submitted.stdout.strip().split(";")[0]
    state: list[str] = []

    def ended() -> bool:
        shown = _client(["scontrol", "-o", "show", "job", job], conf).stdout
        state[:] = re.findall(r"JobState=(\S+)", shown)
        return bool(state) and state[0] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")

    _wait_for(f"a first job ({job}) did not run", ended, timeout)
    if state[0] != "COMPLETED":
        raise ClusterError(f"a first job ({job}) ended {state[0]} instead of COMPLETED")


def start_cluster(
    folder: Path,
    gpus: int = 2,
    cpus: int = 2,
    min_job_age: int = 300,
    timeout: float = 30,
    def_mem_per_cpu: int | None = None,
) -> SlurmTestCluster:
    """Start munged, slurmctld and slurmd for a cluster in `folder` and wait until its node is idle.

    `def_mem_per_cpu` (MB): what a job that asks for no memory gets per CPU, and is killed above (jobacct_gather's
    OverMemoryKill); default 1024, a common real-cluster default, or less on a node too small for it.
    Whatever was started is stopped again when the cluster does not come up."""
    reason = missing_requirements()
    if reason:
        raise ClusterError(reason)
    folder = folder.resolve()
    if running_daemons(folder):
        raise ClusterError(f"a test cluster is already running in {folder}: `python {__file__} stop {folder}` first")
    node = socket.gethostname().split(".")[0]
    # slurmd's step sockets are named <spool>/<node>_<job id>.<step id>
    if len(str(folder / "spool")) + len(node) + 25 > MAX_SOCKET_PATH:
        raise ClusterError(f"{folder} is too long a path for slurmd's step sockets (keep it under ~60 characters)")
    real_memory = max(512, min(_node_memory_mb() - 1024, 16384))
    def_mem = def_mem_per_cpu or max(128, min(1024, real_memory // (2 * cpus)))
    ports = _free_ports(2)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("state", "spool", "log"):
        # Every start is a fresh cluster: recovered jobs of an earlier one would keep the node busy.
        shutil.rmtree(folder / stale, ignore_errors=True)
    conf = _write_configuration(folder, node, gpus, cpus, real_memory, def_mem, ports, min_job_age)
    cluster = SlurmTestCluster(folder, conf, node, gpus, cpus, real_memory, def_mem, ports[0], ports[1])
    (folder / STATE_FILE).write_text(json.dumps({k: str(v) for k, v in asdict(cluster).items()}, indent=1))
    env = _daemon_env(folder, conf)
    munge = folder / "munge"
    try:
        _launch(
            [
                _binary("munged"),
                "--force",
                f"--key-file={munge / 'munge.key'}",
                f"--socket={munge / 'munge.socket'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            env,
            folder / "log" / "munged.stderr",
        )
        _wait_for("munged made no socket", lambda: (munge / "munge.socket").exists(), timeout)
        _launch([_binary("slurmctld"), "-f", str(conf)], env, folder / "log" / "slurmctld.stderr")
        _wait_for(
            "slurmctld did not answer `scontrol ping`",
            lambda: " is UP" in _client(["scontrol", "ping"], conf).stdout,
            timeout,
        )
        _launch([_binary("slurmd"), "-f", str(conf), "-N", node], env, folder / "log" / "slurmd.stderr")
        _wait_for(
            f"node {node} was not idle in `sinfo`",
            lambda: _client(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], conf).stdout.strip() == "idle",
            timeout,
        )
        _run_first_job(conf, timeout)
    except BaseException as error:
        tails = _log_tails(folder)
        stop_cluster(folder)
        if isinstance(error, ClusterError):
            raise ClusterError(f"test Slurm cluster in {folder} did not start: {error}\n{tails}") from None
        raise
    return cluster


def load_cluster(folder: Path) -> SlurmTestCluster:
    state = json.loads((folder / STATE_FILE).read_text())
    ints = {"gpus", "cpus", "real_memory_mb", "def_mem_per_cpu_mb", "controller_port", "slurmd_port"}
    values = {k: (int(v) if k in ints else Path(v) if k in ("folder", "conf") else v) for k, v in state.items()}
    return SlurmTestCluster(**values)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cluster_processes(folder: Path) -> list[int]:
    """Every live process of the cluster in `folder`: its daemons, slurmstepd and the jobs' processes.

    Found by environment: the daemons carry MARKER_VARIABLE (slurmstepd inherits it) and every job gets
    SLURM_CONF pointing into the folder; so a pid file's stale number can never hit an unrelated process."""
    folder = folder.resolve()
    conf = str(folder / "etc" / "slurm.conf")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        environ = _environ(int(entry.name))
        if environ.get(MARKER_VARIABLE) == str(folder) or environ.get("SLURM_CONF") == conf:
            if not _is_zombie(int(entry.name)):
                found.append(int(entry.name))
    return found


def running_daemons(folder: Path) -> dict[str, int]:
    """Daemon name -> pid for the pid files of `folder` whose process is alive and belongs to this cluster."""
    ours = set(cluster_processes(folder)) if folder.exists() else set()
    alive = {}
    for daemon, pid_file in _pid_files(folder).items():
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if pid in ours:
            alive[daemon] = pid
    return alive


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pid for pid in left if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
    return left


def stop_cluster(folder: Path, timeout: float = 10) -> list[int]:
    """Stop the cluster in `folder`: TERM its daemons (pid files), then the processes they leave (slurmstepd, jobs),
    KILL whatever is still there after `timeout` seconds. Idempotent. Returns the pids that needed KILL."""
    folder = folder.resolve()
    if not folder.exists():
        return []
    daemons = running_daemons(folder)
    conf = folder / "etc" / "slurm.conf"
    if "slurmctld" in daemons and "munged" in daemons:
        # Jobs still running end the normal way first (scancel: TERM, then KILL after KillWait), so their
        # slurmstepd report back instead of being killed under slurmd.
        listed = _client(["squeue", "-h", "-o", "%A"], conf, timeout=10)
        jobs = sorted(set(listed.stdout.split())) if listed.returncode == 0 else []
        if jobs:
            _client(["scancel", *jobs], conf, timeout=10)
            # What the jobs left: slurmstepd and their processes (not the daemons nor their helpers).
            steps = [pid for pid in cluster_processes(folder) if not {pid, _parent(pid)} & set(daemons.values())]
            _wait_gone(steps, timeout)
    # slurmd first (no new steps), then the controller, then munged (which both need until they exit).
    for name in ("slurmd", "slurmctld", "munged"):
        if name in daemons:
            _signal_all([daemons[name]], signal.SIGTERM)
            _wait_gone([daemons[name]], timeout / 2)
    others = cluster_processes(folder)
    _signal_all(others, signal.SIGTERM)
    stubborn = _wait_gone(others, timeout / 2)
    _signal_all(stubborn, signal.SIGKILL)
    _wait_gone(stubborn, 5)
    remaining = cluster_processes(folder)
    _signal_all(remaining, signal.SIGKILL)
    _wait_gone(remaining, 5)
    return stubborn + remaining


# --- pytest -------------------------------------------------------------------------------------------------------

_shared: list[SlurmTestCluster] = []
_users = [0]


def _acquire(tmp_path_factory: pytest.TempPathFactory) -> SlurmTestCluster:
    """One cluster per test session, however many places register the fixture."""
    if not _shared:
        reason = missing_requirements()
        if reason:
            if REQUIRE_SLURM:
                pytest.fail(f"VLM_ABLATION_REQUIRE_SLURM=1 but {reason}")
            pytest.skip(reason)
        folder = tmp_path_factory.mktemp("slurm")
        atexit.register(stop_cluster, folder)  # a backstop: teardown normally stops it first
        _shared.append(start_cluster(folder))
    _users[0] += 1
    return _shared[0]


def _release() -> None:
    _users[0] -= 1
    if _users[0] == 0 and _shared:
        stop_cluster(_shared.pop().folder)


if pytest is not None:

    @pytest.fixture(scope="session", name="slurm_cluster")
    def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmTestCluster]:
        """A running single-node cluster for the whole session (skips, or fails under REQUIRE_SLURM, without)."""
        cluster = _acquire(tmp_path_factory)
        try:
            yield cluster
        finally:
            _release()


# --- measuring --------------------------------------------------------------------------------------------------


def measure(folder: Path, tasks: int = 20, singles: int = 5) -> dict[str, float]:
    """Submit-to-start latency of single trivial jobs and the per-task overhead of a trivial array, through the
    backend (orchestrator/slurm.py) against the running cluster in `folder`. Times come from the tasks themselves
    (`date` at their start) and from the backend's wait() polling every 50 ms."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from orchestrator.slurm import SlurmBackend, SlurmJobSpec

    cluster = load_cluster(folder.resolve())
    stamps = cluster.folder / "measure" / secrets.token_hex(4)
    stamps.mkdir(parents=True)
    backend = SlurmBackend(stamps / "jobs", environ=cluster.env, poll_interval=0.05)
    latencies, submits = [], []
    for index in range(singles):
        started = time.time()
        job = backend.submit(SlurmJobSpec(f"single-{index}", "measure", f"date +%s.%N > {stamps}/single-{index}"))
        submits.append(time.time() - started)
        backend.wait([job], timeout=120)
        latencies.append(float((stamps / f"single-{index}").read_text()) - started)
    started = time.time()
    script = f"date +%s.%N > {stamps}/task-${{SLURM_ARRAY_TASK_ID}}"
    job = backend.submit(SlurmJobSpec("array", "measure", script, array=tasks))
    array_submit = time.time() - started
    backend.wait([job], timeout=600)
    done = time.time()
    starts = sorted(float((stamps / f"task-{index}").read_text()) for index in range(tasks))
    latencies.sort()
    return {
        "single_submit_s (sbatch call)": sum(submits) / len(submits),
        "single_submit_to_start_s (median)": latencies[len(latencies) // 2],
        "single_submit_to_start_s (max)": latencies[-1],
        "array_tasks": tasks,
        "array_cpus": cluster.cpus,
        "array_submit_s (sbatch call)": array_submit,
        "array_submit_to_first_start_s": starts[0] - started,
        "array_submit_to_last_start_s": starts[-1] - started,
        "array_submit_to_all_seen_done_s": done - started,
        # Trivial tasks: the makespan is all overhead; spread over the CPUs that ran tasks side by side.
        "array_overhead_per_task_cpu_s": (done - started) * cluster.cpus / tasks,
    }


# --- command line -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python {Path(__file__).name}", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a cluster in DIR and wait until its node is idle")
    start.add_argument("folder", type=Path, metavar="DIR")
    start.add_argument("--gpus", type=int, default=2, help="fake GPUs (gres gpu) on the node (default 2)")
    start.add_argument("--cpus", type=int, default=2, help="CPUs of the node (default 2)")
    start.add_argument(
        "--min-job-age", type=int, default=300, help="seconds the controller keeps an ended job (default 300)"
    )
    start.add_argument(
        "--def-mem-per-cpu", type=int, help="MB per CPU a job that asks for no memory gets, and is held to (1024)"
    )
    stop = commands.add_parser("stop", help="stop the cluster in DIR and every process it started")
    stop.add_argument("folder", type=Path, metavar="DIR")
    timing = commands.add_parser("measure", help="submit-to-start latency and per-task overhead on the cluster in DIR")
    timing.add_argument("folder", type=Path, metavar="DIR")
    timing.add_argument("--tasks", type=int, default=20, help="tasks of the trivial array (default 20)")
    timing.add_argument("--singles", type=int, default=5, help="single trivial jobs, one after another (default 5)")
    args = parser.parse_args(argv)
    if args.command == "measure":
        for name, value in measure(args.folder, args.tasks, args.singles).items():
            print(f"{name:38} {value:.2f}" if isinstance(value, float) else f"{name:38} {value}")
        return 0
    if args.command == "start":
        try:
            cluster = start_cluster(
                args.folder,
                gpus=args.gpus,
                cpus=args.cpus,
                min_job_age=args.min_job_age,
                def_mem_per_cpu=args.def_mem_per_cpu,
            )
        except ClusterError as error:
            print(error, file=sys.stderr)
            return 1
        print(
            f"Slurm test cluster up in {cluster.folder}: node {cluster.node}, {cluster.cpus} CPUs, "
            f"{cluster.real_memory_mb} MB ({cluster.def_mem_per_cpu_mb} MB per CPU by default, enforced), "
            f"{cluster.gpus} fake GPUs (gres gpu)"
        )
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    killed = stop_cluster(args.folder)
    left = cluster_processes(args.folder.resolve()) if args.folder.exists() else []
    print(f"stopped the Slurm test cluster in {args.folder}" + (f" ({len(killed)} killed)" if killed else ""))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
