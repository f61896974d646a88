"""`make demo`: run every example workflow through the real headless host and save what it produces.

Without ``PARALLAX_MODELS`` each checkpoint loader is swapped for ``ParallaxTinyCheckpoint`` and
the model files a workflow needs are synthesised (tiny random weights, real key layouts). With
``PARALLAX_MODELS=<dir>`` the workflows run unchanged on the real weights in that folder
(``<dir>/checkpoints``, ``<dir>/mvadapter``, ...).

Every file a node reports (saved images, previews, a node's own preview images, 3D files) is copied
to ``<out>/<workflow>/``, a row is printed as each workflow finishes, and ``<out>/index.html`` shows
all outputs side by side. Ctrl-C or SIGTERM stops the host too (exit code 130 / 143).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "custom_nodes"))

import demo_report as report  # noqa: E402
import examples  # noqa: E402
from host_server import HostServer, PromptFailed  # noqa: E402

log = logging.getLogger("parallax.demo")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """Raised from the signal handler; a BaseException so no per-workflow ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame) -> None:
    # one stop is enough: a second Ctrl-C while the host shuts down must not skip its clean-up
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def _setup_comfy_imports() -> None:
    """Synthesisers build tiny models in this process: make the host importable on the CPU."""
    comfy = Path(os.environ.get("PARALLAX_COMFYUI", HERE.parent / ".comfyui"))
    sys.path.insert(0, str(comfy))
    from comfy.cli_args import args

    args.cpu = True


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _clear(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file() or old.is_symlink():
            old.unlink()


def _save_outputs(server: HostServer, history: dict, prompt: dict, dest: Path) -> list[report.SavedFile]:
    saved: list[report.SavedFile] = []
    taken: set[str] = set()
    for file in report.collect_outputs(history):
        name = report.saved_name(file, taken)
        try:
            data = server.view(file.view_query())
        except OSError as err:  # a file the host reported but cannot serve: keep the others
            log.warning("%s: could not fetch %s (%s)", dest.name, file.filename, err)
            continue
        (dest / name).write_bytes(data)
        saved.append(report.SavedFile(name, file.node_id, report.node_label(prompt, file.node_id), file.kind,
                                      file.type))
    return saved


def _failed_history(server: HostServer, err: PromptFailed) -> dict:
    """What a failed prompt produced before it failed (its history entry), or nothing."""
    prompt_id = err.details.get("prompt_id") if isinstance(err.details, dict) else None
    if not prompt_id:
        return {}
    try:
        return server.get_json(f"/history/{prompt_id}").get(prompt_id, {})
    except (OSError, ValueError):
        return {}


def run_workflow(server: HostServer, path: Path, out: Path, tiny: bool, run: report.WorkflowRun) -> None:
    """Run one example and fill ``run`` in place (so an interruption still knows how far it got)."""
    dest = out / path.stem
    _clear(dest)
    workflow = examples.load(path)
    examples.prepare_host(workflow, server.base, tiny=tiny)
    prompt = examples.to_prompt(workflow, server.object_info, tiny=tiny)
    run.nodes = len(prompt)
    started = time.monotonic()
    try:
        result = server.run(prompt, workflow)
    except PromptFailed as err:
        run.seconds = time.monotonic() - started
        run.status, run.error = "failed", str(err)
        run.summary = report.error_summary(str(err), err.details if isinstance(err.details, dict) else None)
        run.files = _save_outputs(server, _failed_history(server, err), prompt, dest)
        return
    run.seconds = result.seconds
    run.files = _save_outputs(server, result.history, prompt, dest)
    run.status = "ok"


def index_runs(paths: list[Path], out: Path, runs: list[report.WorkflowRun]) -> list[report.WorkflowRun]:
    """This session's runs, plus runs recorded earlier in ``out`` for the examples it did not run (``--only``)."""
    current = {r.name: r for r in runs}
    listed = []
    for path in examples.example_paths() or paths:
        run = current.get(path.stem) or report.load_run(out / path.stem)
        if run is not None:
            listed.append(run)
    return listed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE.parent / "demo_output")
    parser.add_argument("--only", nargs="*", help="example names to run (default: all)")
    parser.add_argument("--port", type=int, default=None, help="port for the headless host (default: a free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    models = os.environ.get("PARALLAX_MODELS")
    tiny = not models
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [p for p in examples.example_paths() if not args.only or p.stem in args.only]
    unknown = sorted(set(args.only or ()) - {p.stem for p in paths})
    if unknown:
        parser.error(f"unknown example(s) {unknown}; see example_workflows/")
    mode = "tiny random-weight models" if tiny else f"real weights from {models}"
    width = max([len(p.stem) for p in paths] + [8])

    runs: list[report.WorkflowRun] = []
    stopped: int | None = None
    started = time.monotonic()
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    server = HostServer(with_testing_nodes=tiny, models_dir=Path(models) if models else None, port=args.port)
    try:
        try:
            if tiny:
                _setup_comfy_imports()
            log.info("starting ComfyUI headless on %s (%s)", server.url, mode)
            server.start()  # its own process group: stop() ends it with everything it started
            log.info("host ready in %.1fs", time.monotonic() - started)
            print(report.header(width), flush=True)
            for path in paths:
                run = report.WorkflowRun(path.stem, "interrupted", nodes=0)
                runs.append(run)
                t0 = time.monotonic()
                try:
                    run_workflow(server, path, args.out, tiny, run)
                except Stopped:
                    run.seconds = time.monotonic() - t0
                    raise
                except Exception as err:  # a broken example must not hide the others
                    run.status, run.error = "failed", f"{type(err).__name__}: {err}"
                    run.seconds = time.monotonic() - t0
                run.finished = _now()
                report.save_run(run, args.out / path.stem)
                print(report.format_row(run, width), flush=True)
                report.write_index(args.out, index_runs(paths, args.out, runs), note=f"{mode}.")
                if server.proc is not None and server.proc.poll() is not None:
                    log.error("the host exited (%s); last log lines:\n%s", server.proc.returncode, server.log_tail())
                    break
        except Stopped as err:
            stopped = err.signum
            log.warning("\n%s: stopping the host", err)
        finally:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            server.cleanup()

        if stopped is not None and runs and runs[-1].status == "interrupted":
            runs[-1].finished = _now()
            report.save_run(runs[-1], args.out / runs[-1].name)
            print(report.format_row(runs[-1], width), flush=True)
        index = report.write_index(args.out, index_runs(paths, args.out, runs), note=f"{mode}.")
        failures = [r for r in runs if r.status == "failed"]
        print(f"\n{report.header(width)}")
        for run in runs:
            print(report.format_row(run, width))
        for run in failures:
            print(f"\n{run.name}: {run.error[:2000]}")
        ok = sum(r.status == "ok" for r in runs)
        print(f"\n{ok}/{len(paths)} workflows ran in {time.monotonic() - started:.1f}s ({mode}); "
              f"{sum(len(r.files) for r in runs)} files in {args.out}, index {index}", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped is not None:
        return 128 + stopped
    return 1 if failures or ok < len(paths) else 0


if __name__ == "__main__":
    raise SystemExit(main())
