"""The `meshplan` command line. The only module that imports typer: each command parses its arguments, calls one
function, presents the result and returns an exit code."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, cast

import typer
import typer.core
import typer.main
import typer.rich_utils
import yaml
from rich.console import Console

from meshplan.errors import LoadError, MeshplanError
from meshplan.model import Desired, ProxyConfig
from meshplan.present.progress import phases
from meshplan.present.text import printable
from meshplan.xds import pki

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2

app = typer.Typer(
    help="Plan and apply Envoy configuration for a Kuma-style service mesh, from a directory of mesh resources.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"meshplan {version('meshplan')}\n")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _global(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print meshplan's version and exit.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour in any output (as NO_COLOR=1 does).")] = False,
) -> None:
    if no_color:
        os.environ["NO_COLOR"] = "1"
        os.environ["TERM"] = "dumb"


sandbox_app = typer.Typer(help="A local mesh of real Envoys on loopback, for rehearsing a desired directory.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")

DirArg = Annotated[Path, typer.Argument(metavar="DIR", help="The desired directory: YAML files of mesh resources (searched recursively).")]
StateOpt = Annotated[
    Path,
    typer.Option("--state", envvar="MESHPLAN_STATE", help="The state directory (PKI, bootstrap and xDS files, sandbox PIDs)."),
]


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _run(action: Callable[[], int]) -> None:
    """Run a command body; map every meshplan error to a message on stderr and exit code 1, never a traceback."""
    try:
        code = action()
    except LoadError as e:
        console = _err()
        for violation in e.violations:
            console.print(printable(violation), markup=False)
        count = len(e.violations)
        console.print(f"Error: {count} problem{'s' if count != 1 else ''} found; nothing was applied or written.", markup=False)
        code = EXIT_ERROR
    except MeshplanError as e:
        _err().print(f"Error: {printable(e, keep_newlines=True)}", markup=False)
        code = EXIT_ERROR
    except OSError as e:  # a file meshplan was told to write (or read) that the system refuses: say which and why
        where = f"{e.filename}: " if e.filename else ""
        _err().print(printable(f"Error: {where}{e.strerror or e}"), markup=False)
        code = EXIT_ERROR
    raise typer.Exit(code)


def _load(directory: Path) -> Desired:
    from meshplan.validate.resources import load_and_parse

    return load_and_parse(directory)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _write_document(document: dict[str, Any], output: str) -> None:
    """Write `document` to stdout as indented JSON (`output` "json") or as YAML in its own key order (otherwise)."""
    if output == "json":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False))


def _select(proxies: list[ProxyConfig], name: str | None) -> list[ProxyConfig]:
    if name is None:
        return proxies
    chosen = [p for p in proxies if p.name == name]
    if not chosen:
        raise MeshplanError(f"no proxy named {name!r} (proxies: {', '.join(p.name for p in proxies)})")
    return chosen


@app.command()
def validate(
    directory: DirArg,
    envoy: Annotated[bool, typer.Option("--envoy", help="Also run `envoy --mode validate` on every proxy's rendered configuration.")] = False,
) -> None:
    """Check a desired directory and report every problem as FILE:LINE: PATH: MESSAGE (exit 1 if any).

    Nothing is written: with --envoy, throwaway certificates are made in a temporary directory.
    """

    def body() -> int:
        desired = _load(directory)
        console = _err()
        if envoy:
            from meshplan.envoy.binary import validate_configs
            from meshplan.render.proxies import render_all

            with tempfile.TemporaryDirectory(prefix="meshplan-validate-") as tmp:
                state = Path(tmp)
                pki.ensure(desired, state)
                proxies = render_all(desired)
                results = validate_configs(proxies, state / "validate")
            failed = {name: message for name, message in results.items() if message}
            for proxy in proxies:
                if proxy.name in failed:
                    console.print(printable(f"{proxy.name} [{proxy.type}]: Envoy rejects the configuration:"), markup=False)
                    for line in str(failed[proxy.name]).splitlines():
                        console.print(printable(f"  {line}"), markup=False)
                else:
                    console.print(printable(f"{proxy.name} [{proxy.type}]: Envoy accepts the configuration"), markup=False)
            if failed:
                console.print(f"Error: Envoy rejected {len(failed)} of {len(proxies)} proxies.", markup=False)
                return EXIT_ERROR
        count = len(desired.dataplanes) + len(desired.egresses)
        defaults = sum(1 for p in desired.policies if p.kuma_default)
        console.print(
            printable(f"{directory}: valid ({count} prox{'y' if count == 1 else 'ies'}, "
                      f"{_count(len(desired.external_services), 'external service')}, "
                      f"{_count(len(desired.policies) - defaults, 'policy', 'policies')}"
                      + (f", {_count(defaults, 'Kuma default policy', 'Kuma default policies')}" if defaults else "")
                      + ")"),
            markup=False,
        )
        from meshplan.match.unused import warnings

        for warning in warnings(desired):
            console.print(printable(f"Warning: {warning}"), markup=False)
        return EXIT_OK

    _run(body)


@app.command()
def render(
    directory: DirArg,
    proxy: Annotated[Optional[str], typer.Option("--proxy", metavar="NAME", help="Only this proxy.")] = None,
    output: Annotated[Literal["json", "yaml"], typer.Option("--output", "-o", help="The format.")] = "json",
) -> None:
    """Print the Envoy clusters and listeners every proxy should run (certificates are SDS secrets, by name)."""

    def body() -> int:
        from meshplan.render.proxies import render_all

        if output not in ("json", "yaml"):
            raise MeshplanError(f"--output must be json or yaml, got {output!r}")
        proxies = _select(render_all(_load(directory)), proxy)
        document = {
            p.name: {"type": p.type, "mesh": p.mesh, "admin": p.admin_url, "clusters": list(p.clusters), "listeners": list(p.listeners)}
            for p in proxies
        }
        _write_document(document, output)
        return EXIT_OK

    _run(body)


@app.command()
def bootstrap(
    directory: DirArg,
    proxy: Annotated[str, typer.Argument(metavar="PROXY", help="The Dataplane or ZoneEgress name.")],
    xds: Annotated[str, typer.Option("--xds", metavar="HOST:PORT", help="HOST:PORT where this proxy's host reaches `meshplan serve`.")],
    out: Annotated[Path, typer.Option("--out", help="The directory to write the host's files into (created if missing).")],
    host_dir: Annotated[Optional[Path], typer.Option("--host-dir", help="Where OUT will be on the proxy's host, if elsewhere: the bootstrap names its files by that path.")] = None,
    state: StateOpt = Path("state"),
) -> None:
    """Write what one proxy's host needs to be configured by `meshplan serve`: OUT/bootstrap.json (ADS over mTLS to
    --xds, the proxy's node id and admin address) and the proxy's xDS client certificate and key (0600). Copy OUT to
    the host and run `envoy -c bootstrap.json --reject-unknown-dynamic-fields` there."""

    def body() -> int:
        from meshplan.render.proxies import render_all
        from meshplan.xds.bootstrap import write_host_dir

        (chosen,) = _select(render_all(_load(directory)), proxy)
        written = write_host_dir(state, chosen, xds, out, host_dir)
        _err().print(f"Wrote {', '.join(str(p) for p in written)}", markup=False)
        return EXIT_OK

    _run(body)


@app.command()
def serve(
    listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT", help="HOST:PORT to serve ADS on (port 0: any free port).")],
    state: StateOpt = Path("state"),
) -> None:
    """Serve every proxy its snapshot over ADS (gRPC, mTLS with the xDS CA under --state), make-before-break, and
    record each proxy's ACKs and NACKs for `apply` and `drift`. Runs until SIGINT or SIGTERM."""

    def body() -> int:
        import asyncio

        from meshplan.xds.server import main_log
        from meshplan.xds.server import serve as run_server

        asyncio.run(run_server(state, listen, log=main_log))
        return EXIT_OK

    _run(body)


ProxyOpt = Annotated[list[str], typer.Option("--proxy", metavar="GLOB", help="Only proxies whose name matches this glob (repeatable).")]
ExcludeOpt = Annotated[list[str], typer.Option("--exclude-proxy", metavar="GLOB", help="Leave out proxies matching this glob (repeatable).")]
ParallelismOpt = Annotated[int, typer.Option("--parallelism", min=1, metavar="N", help="Proxies fetched at once.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Seconds to connect and for each read, per request.")]
MaxResponseOpt = Annotated[
    str,
    typer.Option("--max-response-bytes", metavar="SIZE", help="The largest admin API answer read (decompressed), in bytes or with "
                 "KiB, MiB, GiB; a proxy whose answer is larger is a bad response. Memory for answers stays under "
                 "about --parallelism x 3 x this."),
]
_SIZE = re.compile(r"\s*(\d+)\s*(|B|KiB|MiB|GiB)\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def _size(text: str, option: str) -> int:
    """A number of bytes written as `65536` or `64MiB`."""
    match = _SIZE.fullmatch(text)
    value = int(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0
    if value < 1024:
        raise MeshplanError(f"{option} must be a size of at least 1KiB, like 65536 or 64MiB, got {text!r}")
    return value


def _console(stderr: bool = False) -> Console:
    # rich turns colour off for NO_COLOR and for output that is not a terminal.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _print_plan(result: Any, output: str, *, summary: bool = False) -> None:
    """A plan on stdout in one of its three views: human (rich), JSON (docs/plan-json.md), markdown."""
    from meshplan.plan.model import to_json
    from meshplan.present.human import render_plan
    from meshplan.present.markdown import render_markdown

    if output == "json":
        sys.stdout.write(json.dumps(to_json(result), indent=2) + "\n")
    elif output == "markdown":
        sys.stdout.write(render_markdown(result))
    else:
        render_plan(_console(), result, summary=summary)


@app.command()
def plan(
    directory: DirArg,
    proxy: ProxyOpt = [],  # noqa: B006 - typer reads the default
    exclude_proxy: ExcludeOpt = [],  # noqa: B006
    output: Annotated[Literal["human", "json", "markdown"], typer.Option("--output", "-o", help="human; json (docs/plan-json.md); markdown, for a pull-request comment.")] = "human",
    json_output: Annotated[bool, typer.Option("--json", help="The same as -o json.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="One line per changed resource.")] = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0 when nothing would change, 2 when something would, 1 on error.")
    ] = False,
    live_from: Annotated[Optional[Path], typer.Option("--live-from", help="Read saved dumps (meshplan snapshot) instead of the admin APIs.")] = None,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="A proxy that cannot be read does not make the plan fail.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-out", help="Also save the plan to this file, for `meshplan apply PLANFILE`.")] = None,
    parallelism: ParallelismOpt = 32,
    timeout: TimeoutOpt = 5.0,
    max_response_bytes: MaxResponseOpt = "64MiB",
    state: StateOpt = Path("state"),
) -> None:
    """Show, per proxy, which clusters and listeners applying would create, change or destroy, field by field, and
    which policy caused each change.

    Exit codes: 0 success (with --detailed-exitcode: no changes); 1 error, or a proxy could not be read (unless
    --allow-incomplete); 2 with --detailed-exitcode: there are changes.
    """

    def body() -> int:
        from meshplan.plan.model import to_json
        from meshplan.plan.workflow import Selection, compute_plan

        result = compute_plan(directory, state, selection=Selection(proxy, exclude_proxy), live_from=live_from,
                              parallelism=parallelism, timeout=timeout,
                              max_response_bytes=_size(max_response_bytes, "--max-response-bytes"), phase=phases(_err()))
        document = to_json(result)
        if out is not None:
            from meshplan.util.fsutil import write_atomic

            try:
                write_atomic(out, (json.dumps(document, indent=2) + "\n").encode())
            except OSError as e:
                raise MeshplanError(f"{out}: cannot write the plan file: {e.strerror or e}") from None
            _err().print(printable(f"Saved the plan to {out}. To apply exactly this plan: meshplan apply {out}"),
                         markup=False)
        _print_plan(result, "json" if json_output else output, summary=summary)
        if not result.complete and not allow_incomplete:
            return EXIT_ERROR
        return EXIT_CHANGES if detailed_exitcode and result.has_changes else EXIT_OK

    _run(body)


@app.command()
def show(
    planfile: Annotated[Path, typer.Argument(metavar="PLANFILE", help="A plan saved with `meshplan plan --out`.")],
    output: Annotated[Literal["human", "json", "markdown"], typer.Option("--output", "-o", help="The format.")] = "human",
) -> None:
    """Print a plan saved with `plan --out`, as `plan` printed it (or its JSON), without contacting any proxy.
    Exit 1 if the file is not a saved plan."""

    def body() -> int:
        from meshplan.plan.model import read_plan_file

        _print_plan(read_plan_file(planfile), output)
        return EXIT_OK

    _run(body)


@app.command("inspect")
def inspect_proxy(
    directory: DirArg,
    proxy: Annotated[str, typer.Argument(metavar="PROXY", help="The Dataplane or ZoneEgress name.")],
    section: Annotated[
        Literal["clusters", "listeners", "routes", "secrets", "all"],
        typer.Argument(metavar="SECTION", help="What to show: clusters, listeners, routes, secrets or all."),
    ] = "all",
    admin: Annotated[Optional[str], typer.Option("--admin", metavar="HOST:PORT", help="Read this admin API instead of the one DIR gives the proxy.")] = None,
    output: Annotated[Literal["table", "json", "yaml"], typer.Option("--output", "-o", help="Tables, or the raw resources.")] = "table",
    timeout: TimeoutOpt = 5.0,
    max_response_bytes: MaxResponseOpt = "64MiB",
) -> None:
    """Show what one proxy's Envoy runs now, read from its admin API: its clusters, listeners, routes (each
    listener's route configuration) and secrets (certificates by name, dates and SANs; never key material).

    Exit 1 if the proxy cannot be read."""

    def body() -> int:
        from meshplan.observe.inspect import SECTIONS
        from meshplan.observe.inspect import inspect_proxy as read_proxy
        from meshplan.plan.workflow import admin_url
        from meshplan.present.inspect import render_inspection
        from meshplan.validate.addresses import http_url
        from meshplan.xds.bootstrap import split_address

        if output not in ("table", "json", "yaml") or section not in (*SECTIONS, "all"):
            raise MeshplanError(f"unknown section {section!r} or --output {output!r}")
        limit = _size(max_response_bytes, "--max-response-bytes")
        url = http_url(*split_address(admin, "--admin")) if admin else admin_url(directory, proxy)
        inspection = read_proxy(proxy, url, timeout=timeout, max_response_bytes=limit)
        sections = SECTIONS if section == "all" else (section,)
        if output == "table":
            render_inspection(_console(), inspection, sections)
            return EXIT_OK
        document = {name: inspection.raw(name) for name in sections}
        _write_document(document, output)
        return EXIT_OK

    _run(body)


@app.command()
def snapshot(
    directory: DirArg,
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The directory to write one JSON dump per proxy into.")],
    proxy: ProxyOpt = [],  # noqa: B006
    exclude_proxy: ExcludeOpt = [],  # noqa: B006
    parallelism: ParallelismOpt = 32,
    timeout: TimeoutOpt = 5.0,
    max_response_bytes: MaxResponseOpt = "64MiB",
) -> None:
    """Save what every proxy of DIR runs now (its managed clusters and listeners), for `plan --live-from OUT`.
    Exit 1 if a proxy could not be read (the others are saved)."""

    def body() -> int:
        from meshplan.observe import live
        from meshplan.plan.workflow import Selection, desired_proxies, fetch_live

        limit = _size(max_response_bytes, "--max-response-bytes")
        proxies = desired_proxies(directory, Selection(proxy, exclude_proxy))
        results = fetch_live(proxies, parallelism=parallelism, timeout=timeout, max_response_bytes=limit,
                             phase=phases(_err()))
        written = live.save_snapshot(results.values(), out)
        console = _err()
        for result in results.values():
            if not result.ok:
                console.print(printable(result), markup=False)
        console.print(printable(f"Saved {len(written)} of {len(results)} proxies to {out}"), markup=False)
        return EXIT_OK if all(r.ok for r in results.values()) else EXIT_ERROR

    _run(body)


@sandbox_app.command("up")
def sandbox_up(directory: DirArg, state: StateOpt = Path("state")) -> None:
    """Start a real Envoy per proxy, a demo app per inbound and a stand-in per external endpoint, all on loopback,
    and wait until every Envoy runs its rendered configuration."""

    def body() -> int:
        from meshplan.render.proxies import render_all
        from meshplan.sandbox import mesh as sandbox

        desired = _load(directory)
        console = _err()
        pki.ensure(desired, state)
        proxies = render_all(desired)
        sandbox.up(desired, proxies, state, log=lambda m: console.print(printable(m, keep_newlines=True), markup=False))
        for proxy in proxies:
            console.print(printable(f"  {proxy.name:<16} [{proxy.type}] admin {proxy.admin_url}"), markup=False)
        console.print(printable(f"Sandbox up: {len(proxies)} Envoys. Stop it with: meshplan sandbox down --state {state}"),
                      markup=False)
        return EXIT_OK

    _run(body)


@sandbox_app.command("status")
def sandbox_status(
    state: StateOpt = Path("state"),
    output: Annotated[Literal["table", "json"], typer.Option("--output", "-o", help="The format.")] = "table",
) -> None:
    """List the sandbox's processes and whether each is alive (exit 1 if any is not)."""

    def body() -> int:
        import dataclasses

        from meshplan.sandbox import mesh as sandbox

        processes = sandbox.status(state)
        dead = sum(1 for p in processes if not p.alive)
        if output == "json":
            sys.stdout.write(json.dumps({"processes": [dataclasses.asdict(p) for p in processes]}, indent=2) + "\n")
            return EXIT_ERROR if dead else EXIT_OK
        if not processes:
            _err().print("No sandbox is recorded in this state directory.", markup=False)
            return EXIT_OK
        for p in processes:
            alive = "running" if p.alive else "DEAD"
            line = f"{p.role:<8} {p.name:<28} pid {p.pid:<8} {alive}{'  ' + p.admin_url if p.admin_url else ''}"
            sys.stdout.write(printable(line) + "\n")
        return EXIT_ERROR if dead else EXIT_OK

    _run(body)


@sandbox_app.command("down")
def sandbox_down(state: StateOpt = Path("state")) -> None:
    """Stop exactly the processes the sandbox started (by PID) and forget them."""

    def body() -> int:
        from meshplan.sandbox import mesh as sandbox

        stopped = sandbox.down(state)
        _err().print(f"Sandbox down: stopped {len(stopped)} processes.", markup=False)
        return EXIT_OK

    _run(body)


@app.command()
def apply(
    target: Annotated[Path, typer.Argument(metavar="DIR|PLANFILE", help="A desired directory (plan now), or a plan saved with `plan --out`.")],
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Apply without asking.")] = False,
    on_failure: Annotated[Literal["stop", "continue"], typer.Option("--on-failure", help="stop: skip the remaining waves after a failure; continue: go on.")] = "stop",
    proxy: ProxyOpt = [],  # noqa: B006
    exclude_proxy: ExcludeOpt = [],  # noqa: B006
    parallelism: Annotated[int, typer.Option("--parallelism", min=1, metavar="N", help="Proxies delivered and verified at once (a wave).")] = 10,
    wait: Annotated[float, typer.Option("--wait", min=0.1, metavar="SECONDS", help="Seconds to wait for each proxy to take its update.")] = 10.0,
    timeout: TimeoutOpt = 5.0,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", min=0.0, metavar="SECONDS", help="Seconds to wait for the state lock.")] = 0.0,
    state: StateOpt = Path("state"),
) -> None:
    """Deliver the plan to the running Envoys, verify each took it, roll back any that refused it, and record state.

    Every changed proxy is checked with `envoy --mode validate` first; if one fails nothing is written anywhere.
    A saved plan is refused when the state or a proxy's running configuration changed since it was made.

    Exit codes: 0 every proxy applied (or had nothing to change); 1 error, or a proxy ended unreachable, timed out or
    failed to roll back; 3 Envoy refused an update and the proxy was rolled back to its previous configuration, or
    proxies were skipped after a failure (every proxy runs a known configuration, not all the desired one).
    """

    def body() -> int:
        from meshplan.apply.command import run_apply

        if on_failure not in ("stop", "continue"):
            raise MeshplanError(f"--on-failure must be stop or continue, got {on_failure!r}")
        return run_apply(
            target, state, out=_console(), err=_err(), auto_approve=auto_approve, stop_on_failure=on_failure == "stop",
            include=proxy, exclude=exclude_proxy, parallelism=parallelism, wait=wait, timeout=timeout,
            lock_timeout=lock_timeout,
        )

    _run(body)


@app.command()
def drift(
    directory: DirArg,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    textfile: Annotated[Optional[Path], typer.Option("--textfile", help="Also write Prometheus gauges here (node_exporter's textfile collector).")] = None,
    proxy: ProxyOpt = [],  # noqa: B006
    exclude_proxy: ExcludeOpt = [],  # noqa: B006
    parallelism: ParallelismOpt = 32,
    timeout: TimeoutOpt = 5.0,
    max_response_bytes: MaxResponseOpt = "64MiB",
    state: StateOpt = Path("state"),
) -> None:
    """For cron: compare each proxy's desired, last-applied and running configuration. No prompts, no colour, and
    nothing written to the state directory.

    Exit codes (the highest wins): 0 every proxy in sync; 2 pending (the desired directory changed since the last
    apply); 3 drifted (a proxy runs something meshplan did not deliver); 4 rejected or unreachable; 1 meshplan failed.
    """

    def body() -> int:
        from meshplan.plan import drift as drift_module
        from meshplan.plan.workflow import Selection, desired_proxies, fetch_live
        from meshplan.state import records as state_module
        from meshplan.xds.store import DirectoryStore

        limit = _size(max_response_bytes, "--max-response-bytes")
        proxies = desired_proxies(directory, Selection(proxy, exclude_proxy))
        recorded = state_module.read(state)
        live = fetch_live(proxies, parallelism=parallelism, timeout=timeout, max_response_bytes=limit,
                          phase=phases(_err()))
        report = drift_module.classify(proxies, recorded, live, *drift_module.server_view(DirectoryStore.under(state), proxies))
        if textfile is not None:
            drift_module.write_textfile(textfile, report)
        if json_output:
            sys.stdout.write(json.dumps(drift_module.to_json(report), indent=2) + "\n")
        else:
            for d in report:
                line = f"{d.status.value:<12} {d.name} [{d.type}]{': ' + d.detail if d.detail else ''}"
                sys.stdout.write(printable(line) + "\n")
        return drift_module.exit_code(report)

    _run(body)


@app.command()
def explain(
    directory: DirArg,
    proxy: Annotated[str, typer.Argument(metavar="PROXY", help="The Dataplane or ZoneEgress name.")],
    policy: Annotated[Optional[str], typer.Option("--policy", metavar="KIND/NAME", help="KIND/NAME: where this policy lands on the proxy, and why not elsewhere.")] = None,
    output: Annotated[Literal["text", "json"], typer.Option("--output", "-o", help="The format.")] = "text",
) -> None:
    """For one proxy: each outbound and inbound with the policies that matched, in merge order, the merged result
    with every field's origin and what it overrode. With --policy, where that policy lands and, where not, why."""

    def body() -> int:
        from meshplan.match.explain import explain_policy, explain_proxy, render_text

        desired = _load(directory)
        result = explain_policy(desired, proxy, policy) if policy else explain_proxy(desired, proxy)
        if output == "json":
            import dataclasses

            sys.stdout.write(json.dumps(dataclasses.asdict(result), indent=2, default=str) + "\n")
        else:
            sys.stdout.write(render_text(result))
        return EXIT_OK

    _run(body)


@app.command("force-unlock")
def force_unlock(
    lock_id: Annotated[str, typer.Argument(metavar="LOCK_ID", help="The lock ID, as the error that names the holder says.")],
    state: StateOpt = Path("state"),
) -> None:
    """Remove the state lock left by a meshplan that is gone. Only with the ID of the lock held now, as the error that
    names the holder says; a lock that cannot be read has an ID too (`broken-...`, in the error) and is moved aside."""

    def body() -> int:
        from meshplan.state import records as state_module

        removed = state_module.force_unlock(state, lock_id)
        if removed.problem:
            aside = state_module.broken_lock_path(state, removed.id)
            _err().print(printable(f"Moved the broken lock {removed.id} ({removed.problem}) aside to {aside}; "
                                   "delete it once you have looked at it."), markup=False)
        else:
            _err().print(printable(f"Removed the lock {removed.describe()}"), markup=False)
        return EXIT_OK

    _run(body)


@app.command()
def demo(
    example: Annotated[Optional[Path], typer.Option("--example", help="The desired directory to run (default: the bundled examples/demo).")] = None,
) -> None:
    """Run the whole story on the bundled example: start a local mesh of real Envoys, plan and apply, send traffic
    through it, change the desired directory and apply again, change a proxy behind meshplan's back and detect the
    drift, then stop every process it started."""

    def body() -> int:
        from meshplan.sandbox.demo import EXAMPLE, run_demo

        return run_demo(_console(), example or EXAMPLE)

    _run(body)


def _help_label(param: Any, ctx: Any) -> str | None:
    """What help shows after an option: nothing for a flag (`--help` included) or an argument (its name is its
    metavar), the choices for a choice, else its metavar (GLOB, SECONDS, HOST:PORT ...), PATH or TEXT; never a
    Python type name, which is what typer shows by default."""
    descriptor = param.type_descriptor
    if isinstance(param, typer.core.TyperArgument) or param.is_flag:
        return None
    if descriptor.is_choice:
        return "|".join(str(choice) for choice in descriptor.choices or ())
    return param.metavar or ("PATH" if descriptor.is_path else "TEXT")


for _parameter_class in (typer.core.TyperOption, typer.core.TyperArgument):
    setattr(_parameter_class, "display_type_rich", _help_label)


def main() -> None:
    """Run the command line. A usage error (an unknown option, a missing argument) exits 1, as every other error
    does: 2 means "changes" to `plan --detailed-exitcode` and "pending" to `drift`, and must not come from a typo."""
    if os.environ.get("NO_COLOR") is not None:
        os.environ.setdefault("TERM", "dumb")
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="meshplan", standalone_mode=False)
    except typer.TyperException as e:  # the parser's errors: an unknown option, a missing or bad argument
        typer.rich_utils.rich_format_error(cast(Any, e))
        code = EXIT_ERROR
    except typer.Abort:
        _err().print("Aborted.", markup=False)
        code = EXIT_ERROR
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
