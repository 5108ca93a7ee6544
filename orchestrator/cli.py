"""python -m orchestrator ablation|fetch|reproduce|images|tiny

Exit codes: 0 every model completed and scoring succeeded; 1 a model or scoring failed; 2 bad input or no engine
(nothing was started); 130 interrupted (Ctrl-C / SIGTERM: every container or process it started is removed).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from contract import AUTO_FORMAT
from contract.dataset import add_data_format_arguments
from orchestrator.engines import EngineError
from orchestrator.plan import AblationOptions, PlanError, parse_models
from runner.cli import batch_size, positive_int
from runner.loop import AUTO, REUSE_IMAGES
from runner.registry import DECODE_KINDS

MODELS_HELP = (
    "comma list of model names (`python -m orchestrator models` lists them), hf:Org/Name[@revision] for any Hub "
    "image-text-to-text model, or `all` (the eight models of the ablation)"
)


def metrics_list(value: str) -> str:
    """--metrics, checked against the scoring step's metric registry when it is installed here (scoring may run in
    its own image), so a typo fails before any model runs."""
    try:
        from scoring.java import ScoringError
        from scoring.metrics import select_metrics
    except ImportError:
        return value
    try:
        select_metrics(value)
    except ScoringError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _add_run_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--models", required=required, help=MODELS_HELP)
    parser.add_argument(
        "--models-file", type=Path, help="your own catalogue entries (TOML, the format of runner/catalogue.toml)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=required,
        help="data file: CSV/TSV (url,query,annotation), COCO annotations, Karpathy split or JSONL (docs/DATA.md)",
    )
    add_data_format_arguments(parser)
    parser.add_argument("--output-dir", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument(
        "--batch-size",
        type=batch_size,
        default=AUTO,
        help="per runner: a number, or auto (default): the largest power of two that fits the GPU's free memory",
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument(
        "--gpus",
        default="auto",
        help="all | none | 0,1 | auto (default: CUDA_VISIBLE_DEVICES, else all the engine has)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "docker", "local", "slurm"),
        default="auto",
        help="auto (docker when an engine answers at DOCKER_HOST, else local), docker, local, or slurm (jobs)",
    )
    parser.add_argument("--model-path-root", type=Path, help="use local checkpoints DIR/<model> (e.g. tiny ones)")
    parser.add_argument("--timeout", type=float, help="seconds per model before its container is killed")
    parser.add_argument("--parallel", action="store_true", help="one model per GPU at a time (needs --gpus 0,1,...)")
    parser.add_argument(
        "--shards",
        type=positive_int,
        default=1,
        help="split each model's samples into N shards, one runner each (spread over --gpus 0,1,..., or Slurm tasks)",
    )
    parser.add_argument("--image-root", type=Path, help="folder relative image paths are resolved against")
    parser.add_argument("--limit", type=positive_int, help="caption only the first N samples")
    parser.add_argument("--dtype", help="runner --dtype (default: the catalogue's on GPU, float32 on CPU)")
    parser.add_argument(
        "--decode", choices=DECODE_KINDS, help="eager or compiled decoding for every model (default: the catalogue's)"
    )
    parser.add_argument(
        "--reuse-images",
        choices=REUSE_IMAGES,
        help="runner --reuse-images for every model: on (the default) encodes each image once for all its queries "
        "where the architecture allows, off once per sample; predictions are the same",
    )
    parser.add_argument(
        "--prompt-template",
        help="instruction with a {query} field (default: the runner's); optional field for a data set without queries",
    )
    parser.add_argument(
        "--hf-cache", type=Path, help="Hugging Face cache folder (default: $HF_HOME or ~/.cache/huggingface)"
    )
    parser.add_argument("--skip-fetch", action="store_true", help="do not download; use what the cache holds")
    parser.add_argument("--shm-size", default="2g", help="/dev/shm size of each inference container")
    parser.add_argument(
        "--container-user",
        metavar="UID:GID",
        help="docker: the account containers run as (default: yours; required when running as root without sudo)",
    )
    parser.add_argument(
        "--memory",
        help="docker: memory limit of each container: a size such as 64g, or auto (what each step needs: the "
        "runner's estimate from its weights and batches, the scoring step's JVMs and Python; docs/SCALING.md); "
        "default: none",
    )
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="move these models' earlier results in --output-dir aside (into replaced-<time>/, never deleted) "
        "instead of refusing predictions made from another data file",
    )
    parser.add_argument(
        "--metrics",
        type=metrics_list,
        metavar="LIST",
        help="scoring: metrics to compute (python -m scoring score --metrics), e.g. all,-spice; default all",
    )
    parser.add_argument(
        "--no-human-baseline",
        action="store_true",
        help="scoring: leave out the human reference row (each sample's first reference scored against the others, "
        "wherever samples have two or more references)",
    )
    slurm = parser.add_argument_group("slurm engine (--engine slurm)")
    slurm.add_argument(
        "--container-runtime",
        choices=("none", "apptainer", "pyxis"),
        default="none",
        help="how jobs run the command: the nodes' Python (none), an Apptainer .sif, or pyxis/enroot",
    )
    slurm.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an sbatch option for every job, e.g. partition=gpu, account=lab, time=02:00:00, mem=64G (repeatable)",
    )
    slurm.add_argument(
        "--slurm-runner-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an sbatch option for the runner tasks only, over --slurm-arg, e.g. mem=48G, cpus-per-task=8 "
        "(default memory: the runner's estimate; repeatable)",
    )
    slurm.add_argument(
        "--slurm-scoring-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an sbatch option for the scoring job only, over --slurm-arg, e.g. mem=16G, partition=cpu "
        "(default: the scoring step's own memory and CPUs; repeatable)",
    )
    slurm.add_argument("--slurm-setup", type=Path, help="a file sourced at the top of every job (modules, a venv)")
    slurm.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per task (--gres=gpu:N; 0: CPU jobs)")
    slurm.add_argument("--slurm-gpu-type", help="a GPU type for --gres=gpu:TYPE:N, e.g. a100")
    slurm.add_argument("--sif-dir", type=Path, help="apptainer: the folder of <family>.sif images (make sif)")
    slurm.add_argument("--detach", action="store_true", help="submit, print the job ids and return")
    parser.add_argument(
        "--image", action="append", default=[], metavar="FAMILY=IMAGE", help="use another image for a family or scoring"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    ablation = commands.add_parser("ablation", help="run models over a data file, then score them")
    _add_run_arguments(ablation, required=True)

    fetch = commands.add_parser("fetch", help="download models' weights into the cache (network on)")
    fetch.add_argument("--models", required=True, help=MODELS_HELP)
    fetch.add_argument("--models-file", type=Path, help="your own catalogue entries (TOML)")
    fetch.add_argument("--engine", choices=("auto", "docker", "local"), default="auto")
    fetch.add_argument("--hf-cache", type=Path, help="cache folder (default: $HF_HOME or ~/.cache/huggingface)")
    fetch.add_argument("--output-dir", type=Path, default=Path("results"), help="where fetch_revisions.json goes")
    fetch.add_argument("--image", action="append", default=[], metavar="FAMILY=IMAGE")
    fetch.add_argument("--container-user", metavar="UID:GID", help="docker: the account the fetch containers run as")

    reproduce = commands.add_parser("reproduce", help="rerun an ablation from its run_manifest.json and compare")
    reproduce.add_argument("--manifest", type=Path, required=True, help="run_manifest.json of the run to reproduce")
    reproduce.add_argument("--output-dir", type=Path, help="new results folder (default: <old>-reproduce-<time>)")
    reproduce.add_argument(
        "--engine", choices=("auto", "docker", "local", "slurm"), help="default: the manifest's (with its settings)"
    )
    reproduce.add_argument("--gpus", help="default: the manifest's")
    reproduce.add_argument("--data", type=Path, help="the data file, where it moved (its sha256 must match)")
    reproduce.add_argument("--model-path-root", type=Path, help="where the local checkpoints are on this host")
    reproduce.add_argument("--container-user", metavar="UID:GID", help="docker: the account containers run as")
    recorded = "default: the original run's, when it used the same engine"
    reproduce.add_argument("--memory", help=f"docker: memory limit of each inference container ({recorded})")
    reproduce.add_argument("--container-runtime", choices=("none", "apptainer", "pyxis"), help=f"slurm ({recorded})")
    reproduce.add_argument(
        "--slurm-arg", action="append", metavar="NAME=VALUE", dest="slurm_args", help=f"slurm, repeatable ({recorded})"
    )
    reproduce.add_argument("--slurm-setup", type=Path, help=f"slurm: a file sourced by every job ({recorded})")
    reproduce.add_argument("--slurm-gpus", type=int, help=f"slurm: GPUs per task ({recorded})")
    reproduce.add_argument("--slurm-gpu-type", help=f"slurm: GPU type ({recorded})")
    reproduce.add_argument("--sif-dir", type=Path, help=f"apptainer: folder of <family>.sif ({recorded})")

    images = commands.add_parser("images", help="build the family and scoring images through the Docker SDK")
    images.add_argument("--families", help="comma list of families and/or `scoring`, or `all` (the default)")
    images.add_argument("--models", help="build what these models need (their images and scoring) instead")
    images.add_argument("--models-file", type=Path, help="your own catalogue entries, for --models")
    images.add_argument("--base-image", help="BASE_IMAGE of the family images (default: the Dockerfiles')")
    images.add_argument("--scoring-base-image", help="BASE_IMAGE of the scoring image (default: the Dockerfile's)")
    images.add_argument("--offline", action="store_true", help="install only from images/wheelhouse (PIP_NO_INDEX=1)")
    images.add_argument(
        "--skip-spice-jars", action="store_true", help="a scoring image without SPICE's jars (SPICE cannot run)"
    )

    status = commands.add_parser("status", help="report a run (a detached slurm run: its jobs' states)")
    status.add_argument("--output-dir", type=Path, default=Path("results"), help="the run's results folder")

    models = commands.add_parser("models", help="list the models you can name, with what is verified for each")
    models.add_argument("--models-file", type=Path, help="your own catalogue entries (TOML), listed too")

    tiny = commands.add_parser("tiny", help="build tiny random-weight checkpoints DIR/<model> (skips existing)")
    tiny.add_argument("--models", default="all")
    tiny.add_argument("--out", type=Path, required=True)
    return parser


def parse_image_overrides(pairs: list[str]) -> dict[str, str]:
    images = {}
    for pair in pairs:
        family, sep, image = pair.partition("=")
        if not sep or not family or not image:
            raise PlanError(f"--image {pair!r}: expected FAMILY=IMAGE, e.g. blip2=vlm-ablation/blip2:dev")
        images[family] = image
    return images


def options_from_args(args: argparse.Namespace) -> AblationOptions:
    return AblationOptions(
        models=parse_models(args.models),
        data_file=args.data,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        gpus=args.gpus,
        engine=args.engine,
        model_path_root=args.model_path_root,
        timeout=args.timeout,
        parallel=args.parallel,
        image_root=args.image_root,
        data_format=None if args.data_format == AUTO_FORMAT else args.data_format,
        split=args.split,
        limit=args.limit,
        dtype=args.dtype,
        prompt_template=args.prompt_template,
        hf_cache=args.hf_cache,
        skip_fetch=args.skip_fetch,
        shm_size=args.shm_size,
        images=parse_image_overrides(args.image),
        report=not args.no_report,
        container_user=args.container_user,
        memory=args.memory,
        models_file=args.models_file,
        shards=args.shards,
        decode=args.decode,
        reuse_images=args.reuse_images,
        slurm_args=list(args.slurm_arg),
        slurm_runner_args=list(args.slurm_runner_arg),
        slurm_scoring_args=list(args.slurm_scoring_arg),
        slurm_setup=args.slurm_setup,
        container_runtime=args.container_runtime,
        slurm_gpus=args.slurm_gpus,
        slurm_gpu_type=args.slurm_gpu_type,
        sif_dir=args.sif_dir,
        detach=args.detach,
        overwrite=args.overwrite,
        metrics=args.metrics,
        human_baseline=not args.no_human_baseline,
    )


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (docker stop, a scheduler's kill) takes the same path as Ctrl-C: remove what was started. SIGINT is
    # set too: a shell that starts us in the background hands us SIGINT ignored, and Python then keeps it ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        if args.command == "ablation":
            from orchestrator.ablation import Ablation, make_engine

            options = options_from_args(args)
            engine = make_engine(options.engine, options.container_user, options.memory, options)
            ablation = Ablation(options, engine)
            ablation.prepare()
            return ablation.run().exit_code
        if args.command == "fetch":
            from orchestrator.fetch import fetch_command

            return fetch_command(args)
        if args.command == "reproduce":
            from orchestrator.reproduce import reproduce_command

            return reproduce_command(args)
        if args.command == "images":
            from orchestrator.images import images_command

            return images_command(args)
        if args.command == "status":
            from orchestrator.status import status_command

            return status_command(args)
        if args.command == "models":
            from orchestrator.models import models_command

            return models_command(args)
        if args.command == "tiny":
            from orchestrator.plan import resolve_models
            from orchestrator.tiny import build_tiny_checkpoints

            specs = resolve_models(parse_models(args.models))  # every name checked before anything is built
            build_tiny_checkpoints([spec.name for spec in specs], args.out)
            return 0
    except (PlanError, EngineError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2
