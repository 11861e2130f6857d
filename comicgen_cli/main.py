"""The `comicgen` command: click for the commands, rich for the progress bar and tables.

click gives nested commands, typed options, prompts (hidden for a password) and help pages
from the docstrings with no boilerplate; rich draws a live progress bar with an ETA that
degrades to plain lines when the output is not a terminal. Both are well kept and common.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from batches.chapter import error_lines, parse_panels, submit_body
from comicgen_cli import config
from comicgen_cli.client import Api, CliError, ExitCode
from comicgen_cli.watch import BatchState, Watcher

EXIT_CODES = """\b
Exit codes:
  0    done (a watched batch ended `completed`)
  1    a watched batch ended `partial`, `failed` or `cancelled`
  2    bad usage, or the API refused the request: no or a refused token
       (run `comicgen login`), over budget, ... (the message says why)
  130  interrupted (Ctrl-C); a watched batch keeps running"""

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the API's JSON answer, for scripts."
)


def api() -> Api:
    try:
        settings = config.load()
    except config.ConfigError as error:
        raise CliError(str(error)) from None
    path = config.config_path()
    if settings.source == str(path) and config.too_open(path):
        err.print(f"[yellow]Warning:[/] {path} is readable by others; run: chmod 600 {path}")
    return Api(settings.url, settings.token)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """comicgen from a terminal: submit chapters of panels, follow them live, cancel, retry,
    download; redraw a panel, pick its take, pause and resume, export the pages as PDF or CBZ.

    The server and token come from COMICGEN_URL and COMICGEN_TOKEN, else from the config file
    `comicgen login` writes (~/.config/comicgen/config.toml).
    """


# --- login -----------------------------------------------------------------------------------


@cli.command()
@click.option("--url", help="The comicgen server, e.g. https://comicgen.example.com.")
@click.option("--username", help="Your comicgen username.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)
@json_option
def login(url: str | None, username: str | None, password_stdin: bool, as_json: bool) -> None:
    """Get your API token with your username and password, and save it."""
    default_url = os.environ.get("COMICGEN_URL") or config.DEFAULT_URL
    with contextlib.suppress(config.ConfigError):
        default_url = config.read_file(config.config_path()).get("url", default_url)
    url = (url or click.prompt("Server URL", default=default_url)).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"The URL must start with http:// or https:// (got {url!r}).")
    username = username or click.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True)
    answer = Api(url, None).obtain_token(username, password)
    path = config.save(url, answer["token"], answer["username"])
    if as_json:
        print_json({"url": url, "username": answer["username"], "config": str(path)})
        return
    out.print(f"Logged in to {url} as {answer['username']}.")
    out.print(f"Token saved in {path} (readable by you only).")


# --- submit and watch ------------------------------------------------------------------------


def read_chapter(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise click.UsageError(f"Cannot read {name}: {error}") from None


@cli.command()
@click.argument("file")
@click.option("--title", default="", help="Default: the file's name.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None)
@click.option("--style", default="", help="Added to every panel's prompt.")
@click.option("--negative-prompt", default="")
@click.option("--model", default=None)
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--steps", type=int, default=None)
@click.option("--watch", is_flag=True, help="Follow the batch live until it ends.")
@json_option
def submit(
    file: str,
    title: str,
    priority: str | None,
    style: str,
    negative_prompt: str,
    model: str | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    watch: bool,
    as_json: bool,
) -> None:
    """Submit FILE as a batch: one panel prompt per line, as in the web form (blank lines and
    lines starting with # are skipped; `42 | prompt` fixes a panel's seed). '-' reads standard
    input."""
    panels = parse_panels(read_chapter(file))
    if not panels:
        raise click.UsageError(f"No prompts in {file}: write one per line (# starts a comment).")
    body = submit_body(
        panels=panels,
        title=title or (Path(file).stem if file != "-" else ""),
        style=style,
        negative_prompt=negative_prompt,
        priority=priority or "",
        params={"model": model, "width": width, "height": height, "steps": steps},
    )
    client = api()
    try:
        batch = client.submit(body)
    except CliError as error:
        if error.data.get("code") == "invalid":
            error.message = "\n  ".join(
                ["The batch was refused:", *error_lines(error.data.get("fields"), panels)]
            )
        raise
    total = batch["counts"]["total"]
    if not as_json:
        out.print(
            f"Batch {batch['id']} submitted: “{escape(batch['title'])}”, {total} "
            f"panel{'' if total == 1 else 's'}, estimated {float(batch['estimated_cost']):.4f} "
            f"{batch['currency']}."
        )
    if watch:
        follow(client, int(batch["id"]), as_json)
        return
    if as_json:
        print_json(batch)
    else:
        out.print(
            f"  Follow it: comicgen watch {batch['id']}   ({client.url}/batches/{batch['id']}/)"
        )


@cli.command(name="watch")
@click.argument("batch_id", type=click.IntRange(min=1))
@json_option
def watch_command(batch_id: int, as_json: bool) -> None:
    """Follow batch BATCH_ID live until it ends (re-attach after Ctrl-C or from another
    machine). Exits 0 when it ends completed, 1 otherwise."""
    follow(api(), batch_id, as_json)


def follow(client: Api, batch_id: int, as_json: bool) -> None:
    """Watch to the end, print the outcome, exit with the batch's exit code."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=as_json,
    )
    task: TaskID | None = None

    def draw(state: BatchState) -> None:
        nonlocal task
        counts = state.counts
        total = counts.get("total", 0)
        done = sum(counts.get(key, 0) for key in ("completed", "failed", "cancelled"))
        active = sum(counts.get(key, 0) for key in ("submitted", "running", "retrying"))
        bad = counts.get("failed", 0) + counts.get("cancelled", 0)
        detail = f"{active} rendering · {bad} failed/cancelled · {state.cost:.4f} {state.currency}"
        description = f"Batch {state.batch_id} {state.status}"
        if task is None:
            task = progress.add_task(description, total=total or None, detail=detail)
        progress.update(task, description=description, completed=done, total=total, detail=detail)

    def note(message: str) -> None:
        if not as_json:
            err.print(message)

    watcher = Watcher(client, batch_id, draw, note)
    try:
        with progress:
            state = watcher.run()
    except KeyboardInterrupt:
        err.print(
            f"\nStopped watching; batch {batch_id} keeps running on the server. "
            f"Re-attach with: comicgen watch {batch_id}"
        )
        sys.exit(ExitCode.INTERRUPTED)
    if as_json:
        print_json(client.batch(batch_id))
    else:
        counts = state.counts
        out.print(
            f"Batch {batch_id} {state.status}: {counts.get('completed', 0)} completed, "
            f"{counts.get('failed', 0)} failed, {counts.get('cancelled', 0)} cancelled of "
            f"{counts.get('total', 0)}. Cost {state.cost:.4f} {state.currency}."
        )
        if counts.get("completed"):
            out.print(f"  Download: comicgen download {batch_id}")
        if counts.get("failed") or counts.get("cancelled"):
            out.print(f"  Retry the rest: comicgen retry {batch_id}")
    sys.exit(ExitCode.OK if state.status == "completed" else ExitCode.BATCH_NOT_COMPLETED)


# --- the other commands ----------------------------------------------------------------------


@cli.command(name="list")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@json_option
def list_command(page: int, as_json: bool) -> None:
    """Your batches, newest first (20 a page)."""
    answer = api().batches(page)
    if as_json:
        print_json(answer)
        return
    if not answer.get("results"):
        out.print("No batches yet." if page == 1 else f"No batches on page {page}.")
        return
    table = Table("ID", "Status", "Title", "Done", "Cost", "Created", box=None)
    for batch in answer["results"]:
        counts = batch["counts"]
        table.add_row(
            str(batch["id"]),
            batch["status"],
            escape(batch["title"]),
            f"{counts['completed']}/{counts['total']}",
            f"{float(batch['actual_cost']):.4f} {batch['currency']}",
            str(batch["created_at"])[:16].replace("T", " "),
        )
    out.print(table)
    if answer.get("next"):
        out.print(f"More: comicgen list --page {page + 1}")


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@json_option
def show(batch_id: int, as_json: bool) -> None:
    """One batch and each of its panels."""
    batch = api().batch(batch_id)
    if as_json:
        print_json(batch)
        return
    counts = batch["counts"]
    out.print(
        f"Batch {batch['id']} “{escape(batch['title'])}”: {batch['status']}, "
        f"{counts['completed']}/{counts['total']} completed, {counts['failed']} failed, "
        f"{counts['cancelled']} cancelled. Cost {float(batch['actual_cost']):.4f} of "
        f"{float(batch['estimated_cost']):.4f} {batch['currency']} estimated."
    )
    table = Table("#", "Status", "Tries", "Cost", "Prompt / error", box=None)
    for image in batch["images"]:
        error = escape(image["error"]) if image.get("error") else ""
        text = escape(image["prompt"]) + (f"\n[red]{error}[/]" if error else "")
        table.add_row(
            str(image["index"] + 1),
            image["status"],
            str(image["attempts"]),
            f"{float(image['cost']):.4f}",
            text,
        )
    out.print(table)


def _action(verb: str, call: Callable[[Api, int], dict[str, Any]]) -> Callable[..., None]:
    def run(batch_id: int, as_json: bool) -> None:
        batch = call(api(), batch_id)
        if as_json:
            print_json(batch)
            return
        counts = batch["counts"]
        out.print(
            f"Batch {batch['id']} {verb}: now {batch['status']}, {counts['completed']}/"
            f"{counts['total']} completed. Follow it: comicgen watch {batch['id']}"
        )

    return run


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@json_option
def cancel(batch_id: int, as_json: bool) -> None:
    """Cancel what has not finished (finished panels stay, and are paid for)."""
    _action("cancelled", Api.cancel)(batch_id, as_json)


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@json_option
def retry(batch_id: int, as_json: bool) -> None:
    """Requeue the failed and cancelled panels (finished ones are never redone)."""
    _action("requeued", Api.retry)(batch_id, as_json)


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
    help="Where to save the ZIP. Default: batch-<id>.zip here.",
)  # fmt: skip
@json_option
def download(batch_id: int, output: str | None, as_json: bool) -> None:
    """Download the finished panels of a batch as a ZIP (panel-001.png, ...)."""
    target = Path(output or f"batch-{batch_id}.zip")
    size, chunks = api().download(batch_id)
    written = save_stream(target, size, chunks, as_json)
    if as_json:
        print_json({"batch_id": batch_id, "path": str(target), "bytes": written})
    else:
        out.print(f"Saved {target} ({written:,} bytes).")


def save_stream(target: Path, size: int | None, chunks: Iterator[bytes], as_json: bool) -> int:
    """Write a streamed answer to `target` with a progress bar, through a `.part` file so an
    interrupted transfer never leaves a truncated file under the real name. The bytes written."""
    partial = target.with_name(target.name + ".part")
    written = 0
    progress = Progress(
        TextColumn(f"[bold]{target.name}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        disable=as_json,
    )
    try:
        with progress, partial.open("wb") as handle:
            task = progress.add_task("download", total=size)
            for chunk in chunks:
                handle.write(chunk)
                written += len(chunk)
                progress.update(task, completed=written)
        partial.replace(target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise CliError(f"Cannot write {target}: {error.strerror or error}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


# --- the authors' tools ----------------------------------------------------------------------

panel_argument = click.argument("panel", type=click.IntRange(min=1))


def refused(error: CliError, what: str) -> CliError:
    """An API refusal worded for the command: a 409 says what state stood in the way, a 400
    lists each refused field with the API's own words."""
    if error.data.get("status") == 409:
        error.message = f"Cannot {what}: {error.message}"
    fields = error.data.get("fields")
    if error.data.get("code") == "invalid" and isinstance(fields, dict):
        lines = [
            f"{name}: " + (" ".join(map(str, said)) if isinstance(said, list) else str(said))
            for name, said in fields.items()
        ]
        error.message = "\n  ".join([f"Cannot {what}:", *lines])
    return error


def panel_of(client: Api, batch_id: int, panel: int) -> dict[str, Any]:
    """The image for PANEL (counted from 1, as on the page) of the caller's batch; a panel
    the batch does not have is an error naming the ones it has."""
    batch = client.batch(batch_id)
    images = {image["index"]: image for image in batch.get("images", [])}
    image = images.get(panel - 1)
    if image is None:
        raise CliError(
            f"Batch {batch_id} has no panel {panel}: its panels are 1 to {len(images)}."
            if images
            else f"Batch {batch_id} has no panels."
        )
    return image


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@panel_argument
@click.option("--prompt", default=None, help="A new prompt. Default: the panel's own.")
@click.option(
    "--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None,
    help="Draw with this seed. Default: a new random one.",
)  # fmt: skip
@click.option("--keep-seed", is_flag=True, help="Draw with the panel's current seed.")
@click.option("--watch", is_flag=True, help="Then follow the batch live until it ends.")
@json_option
def redraw(
    batch_id: int,
    panel: int,
    prompt: str | None,
    seed: int | None,
    keep_seed: bool,
    watch: bool,
    as_json: bool,
) -> None:
    """Draw a new take of PANEL (counted from 1, as on the page) of batch BATCH_ID, priced and
    reserved like a submit. Earlier takes are kept: `comicgen select` picks one back."""
    if keep_seed and seed is not None:
        raise click.UsageError("Give --seed N or --keep-seed, not both.")
    client = api()
    image = panel_of(client, batch_id, panel)
    body: dict[str, Any] = {}
    if prompt is not None:
        body["prompt"] = prompt
    if keep_seed:
        body["seed"] = image["seed"]
    elif seed is not None:
        body["seed"] = seed
    try:
        take = client.redraw(batch_id, panel - 1, body)
    except CliError as error:
        raise refused(error, f"redraw panel {panel} of batch {batch_id}") from None
    if as_json and not watch:
        print_json(take)
        return
    if not as_json:
        out.print(
            f"Panel {panel} of batch {batch_id}: take {take['version']} is {take['status']}, "
            f"seed {take['seed']}: “{escape(take['prompt'])}”."
        )
    if watch:
        follow(client, batch_id, as_json)
        return
    out.print(f"  Follow it: comicgen watch {batch_id}")
    out.print(f"  Earlier takes are kept; pick one with: comicgen select {batch_id} {panel} N")


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@panel_argument
@click.argument("version", type=click.IntRange(min=1))
@json_option
def select(batch_id: int, panel: int, version: int, as_json: bool) -> None:
    """Use take VERSION of PANEL (counted from 1) in the ZIP, the pages and the export. `comicgen
    show BATCH_ID --json` lists each panel's takes (`versions`)."""
    client = api()
    panel_of(client, batch_id, panel)
    try:
        image = client.select(batch_id, panel - 1, version)
    except CliError as error:
        raise refused(error, f"select take {version} of panel {panel}") from None
    if as_json:
        print_json(image)
        return
    takes = ", ".join(str(take["version"]) for take in image.get("versions", []))
    out.print(
        f"Panel {panel} of batch {batch_id}: take {image['selected_version']} selected "
        f"(takes: {takes}). The ZIP, the pages and the export use it."
    )


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@json_option
def pause(batch_id: int, as_json: bool) -> None:
    """Stop submitting new panels of a running batch: those already on RunPod finish and are
    stored, the reservation stays. Exits 2 when the batch is not running."""
    try:
        batch = api().pause(batch_id)
    except CliError as error:
        raise refused(error, f"pause batch {batch_id}") from None
    if as_json:
        print_json(batch)
        return
    counts = batch["counts"]
    out.print(
        f"Batch {batch_id} paused ({counts['completed']}/{counts['total']} completed): panels "
        f"already on RunPod finish, nothing new starts. Go on with: comicgen resume {batch_id}"
    )


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@click.option("--watch", is_flag=True, help="Then follow the batch live until it ends.")
@json_option
def resume(batch_id: int, watch: bool, as_json: bool) -> None:
    """Go on with a paused batch. Exits 2 when the batch is not paused."""
    client = api()
    try:
        batch = client.resume(batch_id)
    except CliError as error:
        raise refused(error, f"resume batch {batch_id}") from None
    if watch:
        if not as_json:
            out.print(f"Batch {batch_id} resumed.")
        follow(client, batch_id, as_json)
        return
    if as_json:
        print_json(batch)
        return
    counts = batch["counts"]
    out.print(
        f"Batch {batch_id} resumed: now {batch['status']}, {counts['completed']}/"
        f"{counts['total']} completed. Follow it: comicgen watch {batch_id}"
    )


EXPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,199}")


def export_target(server_name: str | None, batch_id: int, kind: str) -> Path:
    """Where an export is saved by default: the server's file name, in the current folder. Only
    its last component is taken, and only a plain name with the format's extension (no path,
    no hidden file, no control or shell characters); anything else is refused and the export
    is saved as batch-<id>.<kind> instead, so a server can never write outside this folder."""
    fallback = Path(f"batch-{batch_id}.{kind}")
    if not server_name:
        return fallback
    base = server_name.replace("\\", "/").rsplit("/", 1)[-1]
    if not EXPORT_NAME.fullmatch(base) or not base.lower().endswith(f".{kind}"):
        err.print(f"The server named the file {server_name!r}; saving it as {fallback} instead.")
        return fallback
    return Path(base)


@cli.command()
@click.argument("batch_id", type=click.IntRange(min=1))
@click.option(
    "--format", "kind", type=click.Choice(["pdf", "cbz"]), default="pdf", show_default=True,
    help="A PDF, or a CBZ (comic book archive, with ComicInfo.xml).",
)  # fmt: skip
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
    help="Where to save it. Default: the server's name for it (after the title), here.",
)  # fmt: skip
@json_option
def export(batch_id: int, kind: str, output: str | None, as_json: bool) -> None:
    """Export the chapter laid out as comic pages, with each panel's selected take. Panels with
    no image keep their frame, captioned."""
    answer = api().export(batch_id, kind)
    target = Path(output) if output else export_target(answer.filename, batch_id, kind)
    written = save_stream(target, answer.size, answer.chunks, as_json)
    pages = int(answer.pages) if answer.pages and answer.pages.isdigit() else None
    if as_json:
        print_json(
            {"batch_id": batch_id, "format": kind, "path": str(target), "bytes": written,
             "pages": pages}
        )  # fmt: skip
    else:
        shown = f"{pages} page{'' if pages == 1 else 's'}, " if pages is not None else ""
        out.print(f"Saved {target} ({shown}{written:,} bytes).")


# --- entry point -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """The console script: click's own exit codes are mapped onto the documented ones (a usage
    error is 1 here, not click's 2, which means "the batch did not complete")."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(args=args, prog_name="comicgen", standalone_mode=False)
    except click.UsageError as error:
        error.show()
        sys.exit(ExitCode.ERROR)
    except click.ClickException as error:
        error.show()
        sys.exit(ExitCode.ERROR)
    except click.Abort:
        err.print("\nAborted.")
        sys.exit(ExitCode.INTERRUPTED)
    except CliError as error:
        if "--json" in args:
            print_json({"code": error.data.get("code", "error"), "detail": error.message})
        err.print(f"[red]Error:[/] {escape(error.message)}", markup=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("\nInterrupted.")
        sys.exit(ExitCode.INTERRUPTED)
    sys.exit(code if isinstance(code, int) else ExitCode.OK)
