"""`tiercel profile BUNDLE [BUNDLE ...]`: stage latencies, roofline fractions and device estimates, compared.

    tiercel profile bundles/base bundles/base-int8 --backend onnxruntime --backend openvino --json p.json --plot p.png

Thin: parse options, call tiercel.runtime.profile.profile (its progress goes to stderr), print its tables, write files.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tiercel.cli.app import BACKEND_OPTION, app
from tiercel.runtime.backends import backends_help


def split_list(values: list[str] | None) -> list[str]:
    """Repeated and/or comma-separated option values -> one list, order kept, duplicates dropped."""
    items = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(items))


@app.command()
def profile(
    bundles: list[Path] = typer.Argument(..., help="Bundle directories (or PyTorch checkpoint directories) to profile and compare."),
    backend: list[str] = typer.Option(["onnxruntime"], "--backend", help=f"{backends_help()}; repeat or comma-separate to compare backends."),
    device: str = typer.Option(None, "--device", help="Backend device (cpu/cuda for onnxruntime and checkpoints, CPU/GPU/NPU for openvino)."),
    task: list[str] = typer.Option(["IMG_CAP,REG_DET_HBB"], "--tasks", help="Task tags to time (comma-separated or repeated), or 'all'."),
    runs: int = typer.Option(5, "--runs", help="Timed runs per task."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed runs per task first."),
    new_tokens: int = typer.Option(32, "--new-tokens", help="Tokens generated per task, exactly (eos is ignored) so runs compare."),
    num_beams: int = typer.Option(None, "--num-beams", help="Beams (default: each bundle's own setting)."),
    image: Path = typer.Option(None, "--image", help="Image to run on (default: a synthetic square of --image-size)."),
    image_size: int = typer.Option(768, "--image-size", help="Side of the synthetic image in pixels."),
    threads: int = typer.Option(None, "--threads", help="Backend intra-op threads (default: the backend's)."),
    option: list[str] = BACKEND_OPTION,
    run_all: bool = typer.Option(True, "--run-all/--no-run-all", help="Also time run_all over the single-image tasks."),
    json_out: Path = typer.Option(None, "--json", help="Write every number (seconds, bytes) as JSON here."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG chart of the stage breakdown here (needs matplotlib)."),
    device_spec: Path = typer.Option(None, "--device-spec", help="YAML/JSON file with more devices for the estimates."),
):
    """Time every stage of one or more bundles (or checkpoints) and compare them; add roofline fractions and device estimates."""
    from tiercel.fileio import check_distinct, check_json_output, check_plot_output

    check_json_output(json_out)  # before the work, not after it
    check_plot_output(plot)
    check_distinct(plot, "--plot", ("the --json file", json_out))

    from rich.console import Console

    from tiercel import tasks
    from tiercel.models.open import CHECKPOINTS  # torch only when a checkpoint is opened
    from tiercel.runtime.backends import parse_options
    from tiercel.runtime.profile import DEVICES, ProfileSettings, load_device_specs
    from tiercel.runtime.profile import report as render
    from tiercel.runtime.profile.runner import profile as run_profile

    tags = split_list(task)
    tags = list(tasks.TAGS) if [t.lower() for t in tags] == ["all"] else tags
    settings = ProfileSettings(runs=runs, warmup=warmup, new_tokens=new_tokens, num_beams=num_beams, tasks=tuple(tags),
                               run_all=run_all, image_size=image_size, threads=threads, device=device,
                               options=parse_options(option)).check()
    devices = dict(DEVICES)
    if device_spec is not None:
        devices.update(load_device_specs(device_spec))
    if plot is not None:
        from tiercel.errors import require

        require("matplotlib", "profile", "the --plot chart")  # fail before minutes of timing
    img = None
    if image is not None:
        from tiercel.data.images import load_image

        img = load_image(image)
    backends = split_list(backend)
    console = Console(highlight=False, width=None if Console().is_terminal else 220)
    report = run_profile(bundles, backends, settings, devices, img, checkpoints=CHECKPOINTS)  # its progress: stderr
    console.print(render.comparison_table(report))
    console.print(render.roofline_table(report))
    for line in render.roofline_notes(report) + render.precision_notes(report):
        console.print(line, markup=False, soft_wrap=True)
    console.print(render.estimate_table(report))
    for line in render.estimate_notes(report):
        console.print(line, markup=False, soft_wrap=True)
    if json_out is not None:
        from tiercel.fileio import write_output_json

        write_output_json(json_out, report.to_dict(), "profile")
        console.print(f"wrote {json_out}", markup=False, soft_wrap=True)
    if plot is not None:
        render.plot(report, plot)
        console.print(f"wrote {plot}", markup=False, soft_wrap=True)
