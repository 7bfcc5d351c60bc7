"""The ``burstmap`` command: look at jobs in the store (progress, results, logs, statistics, pictures),
clean them up, and manage the configuration.

``main`` is a click group; other modules add their subcommands with ``main.add_command(...)``.
Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line on stderr.
"""

from __future__ import annotations

import csv
import datetime
import importlib
import os
import pdb
import pickle
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NoReturn

import click
import yaml

from . import registry
from .config import Config, config_path, load_config, secret_key_path
from .errors import BurstmapError, JobNotFoundError
from .executor import Executor
from .job import Layout
from .lease import expired
from .redact import redact
from .stats import CALL_FIELDS, FAILED_STATES, JobRecords, JobSummary, job_stats, list_jobs
from .storage.base import Storage

__all__ = ["main", "Session", "pass_session"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: A job with pending calls counts as running if it was submitted or finished a call this recently.
RUNNING_WINDOW = 3600.0
_STRAGGLERS_SHOWN = 5


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


#: Subcommands whose modules need optional packages: imported only when asked for.
LAZY_COMMANDS = {
    "lambda": ("burstmap.deploy:lambda_group", "aws"),
    "standalone": ("burstmap.launch:standalone_group", "aws"),
    "worker": ("burstmap.daemon:worker", "redis"),
}


class _Group(click.Group):
    """A click group that turns burstmap's errors into one line on stderr and exit code 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        path, extra = LAZY_COMMANDS[name]
        module, _, attr = path.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as e:
            hint = f"`burstmap {name}` needs {e.name}: pip install 'burstmap[{extra}]'"

        @click.command(name, help=f"(unavailable: {hint})", context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args: tuple[str, ...]) -> None:
            raise click.ClickException(hint)

        return unavailable

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the reader left (| head): no noise
            ctx.exit(1)
        except JobNotFoundError as e:
            raise click.ClickException(f"{_one_line(e)}; list job ids with: burstmap jobs") from None
        except (BurstmapError, OSError) as e:
            raise click.ClickException(_one_line(e)) from None


@dataclass
class Session:
    """What every subcommand shares: the configuration and the store, built on first use."""

    store_url: str | None = None
    prefix_override: str | None = None

    @cached_property
    def config(self) -> Config:
        """The configuration, loaded the normal way, with ``--store`` and ``--prefix`` applied."""
        return load_config(storage=self.store_url, prefix=self.prefix_override)

    @property
    def prefix(self) -> str:
        """The key prefix of jobs."""
        return self.config.prefix

    @cached_property
    def storage(self) -> Storage:
        """The store named by ``--store`` (with the options configured for its kind), else the configured one."""
        return registry.build("storage", self.config.storage.name, self.config.storage.options)

    def job(self, job_id: str) -> JobRecords:
        """Load a job's manifest and records; unknown ids become a one-line error."""
        return JobRecords.load(self.storage, self.config.secret(), self.prefix, job_id)


pass_session = click.make_pass_decorator(Session)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", metavar="URL", help="The store to use (file:///dir, /dir, s3://bucket, redis://host:port/db), "
              "instead of the configured one; it keeps the options configured for its kind (an S3 endpoint).")
@click.option("--prefix", metavar="PREFIX", help="The key prefix of jobs in the store (default from config).")
@click.version_option(package_name="burstmap")
@click.pass_context
def main(ctx: click.Context, store: str | None, prefix: str | None) -> None:
    """Run one Python function over many inputs in parallel: inspect and clean the jobs in the store."""
    ctx.obj = Session(store, prefix)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _liveness(job: JobSummary, storage: Storage, now: float) -> str:
    """``finished``; ``running`` while its client's lease holds; ``abandoned`` once it ran out with calls
    unfinished. A job without a lease (older burstmap) is ``running`` while it was submitted or
    finished a call within `RUNNING_WINDOW` (or its call timeout, if longer), else ``stalled``.
    """
    if job.pending == 0:
        return "finished"
    gone = expired(storage, job.layout, now)
    if gone is not None:
        return "abandoned" if gone else "running"
    last = max(job.submitted, job.last_end or 0.0)
    return "running" if now - last < max(RUNNING_WINDOW, job.timeout or 0.0) else "stalled"


def _resume_hint(job: JobSummary) -> str:
    return (f"job {job.job_id} is abandoned: its client stopped watching with {job.pending} calls "
            f"unfinished; finish it with burstmap.attach({job.job_id!r}, resume=True)")


# ---- config ---------------------------------------------------------------------------------------

_DEFAULT_CONFIG = """\
# burstmap configuration. Environment variables override each setting:
# BURSTMAP_BACKEND, BURSTMAP_STORAGE, BURSTMAP_PREFIX, BURSTMAP_TIMEOUT, BURSTMAP_WORKER_RETRIES,
# BURSTMAP_PROGRESS, BURSTMAP_SECRET_KEY, BURSTMAP_BACKEND_<OPTION>, BURSTMAP_STORAGE_<OPTION>.

# Where calls run: local (worker processes on this machine).
backend:
  name: local
  # workers: 4            # default: one per core

# Where functions, inputs and results are kept: local (a directory), s3 or redis.
storage:
  name: local
  # path: {store}

# Every key of every job starts with this.
prefix: burstmap

# timeout: 600            # seconds after which a call is stopped (default: none)
worker_retries: 2            # re-runs of a call whose worker died
progress: auto            # progress bar: true, false or auto (when stderr is a terminal)

# The HMAC key that signs payloads; the same on every machine of a job.
# Default: generated once into {secret}
# secret_key: ...
"""


@main.group("config")
def config_group() -> None:
    """Write or show the configuration file."""


@config_group.command("init")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(force: bool) -> None:
    """Write a commented default configuration to the config path."""
    from .storage.local import default_path
    path = config_path()
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_DEFAULT_CONFIG.format(store=default_path(), secret=secret_key_path()))
    click.echo(f"wrote {path}")


@config_group.command("show")
@pass_session
def config_show(session: Session) -> None:
    """Print the effective configuration (file, environment, options), secrets hidden."""
    cfg = session.config
    registry.check("backend", cfg.backend.name, cfg.backend.options)  # what the executor would refuse
    registry.check("storage", cfg.storage.name, cfg.storage.options)
    path = config_path()
    shown = {
        "backend": {"name": cfg.backend.name, **cfg.backend.options},
        "storage": {"name": cfg.storage.name, **cfg.storage.options},
        "prefix": cfg.prefix, "timeout": cfg.timeout, "worker_retries": cfg.worker_retries,
        "progress": "auto" if cfg.progress is None else cfg.progress,
        "secret_key": cfg.secret_key,
    }
    shown = redact(shown)
    if not cfg.secret_key:
        shown["secret_key"] = f"(generated into {secret_key_path()})"
    click.echo(f"# {path} ({'read' if path.exists() else 'missing: defaults'}), then the environment")
    click.echo(yaml.safe_dump(shown, sort_keys=False).rstrip())


# ---- jobs, status -----------------------------------------------------------------------------------

def _table(rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        yield "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()


def _job_row(job: JobSummary, storage: Storage, now: float) -> list[str]:
    counts = job.counts
    if job.pending == 0 and job.last_end is not None:
        duration = _seconds(job.last_end - job.submitted)
    else:
        duration = _liveness(job, storage, now)
    return [job.job_id, job.function, str(counts["ok"]), str(sum(counts[s] for s in FAILED_STATES)),
            str(job.pending), str(counts["corrupt"]), _when(job.submitted), duration]


@main.command("jobs")
@pass_session
def jobs_command(session: Session) -> None:
    """List the jobs in the store, oldest first."""
    rows = [["JOB", "FUNCTION", "DONE", "FAILED", "PENDING", "CORRUPT", "SUBMITTED", "DURATION"]]
    now = time.time()
    for job in list_jobs(session.storage, session.config.secret(), session.prefix):
        if isinstance(job, JobSummary):
            rows.append(_job_row(job, session.storage, now))
        else:
            rows.append([job[0], f"(unreadable manifest: {job[1]})", "-", "-", "-", "-", "-", "-"])
    if len(rows) == 1:
        click.echo(f"no jobs under prefix {session.prefix!r} in {session.storage!r}", err=True)
        return
    click.echo("\n".join(_table(rows)))


def _follow(job: JobRecords, interval: float) -> None:
    """A progress bar until every call has finished or the job is abandoned."""
    from tqdm import tqdm
    finished = job.manifest.n_calls - job.pending
    with tqdm(total=job.manifest.n_calls, initial=finished, unit="call", desc=job.manifest.job_id,
              file=sys.stderr) as bar:
        while True:
            counts = job.counts()
            bar.update(job.manifest.n_calls - job.pending - bar.n)
            bar.set_postfix(done=counts["ok"], failed=sum(counts[s] for s in FAILED_STATES),
                            running_or_queued=job.pending, refresh=False)
            if _liveness(job.summary(), job.storage, time.time()) in ("finished", "abandoned"):
                break
            time.sleep(interval)
            job.refresh()


@main.command("status")
@click.argument("job_id", metavar="JOB")
@click.option("--follow", "-f", is_flag=True, help="Show a progress bar until every call has finished "
              "(or the job is abandoned).")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between polls with --follow.")
@pass_session
def status_command(session: Session, job_id: str, follow: bool, interval: float) -> None:
    """Count a job's calls by state (pending means queued or running), and say if it was abandoned."""
    job = session.job(job_id)
    if follow:
        _follow(job, interval)
    click.echo(f"job {job_id}: {job.manifest.function}, {job.manifest.n_calls} calls, "
               f"submitted {_when(job.manifest.submitted)}")
    for state, count in job.counts().items():
        if count or state in ("ok", "pending"):
            click.echo(f"  {state:<9} {count}")
    summary = job.summary()
    if _liveness(summary, job.storage, time.time()) == "abandoned":
        raise click.ClickException(_resume_hint(summary))


# ---- results, logs ------------------------------------------------------------------------------------

def _outcomes(session: Session, job: JobRecords) -> Iterator[tuple[int, str, Any]]:
    """Each call's (call_id, state, result or exception); pending calls give ``None``."""
    from .future import Deferred
    from .watcher import outcome
    key = session.config.secret()
    for call_id in range(job.manifest.n_calls):
        if call_id in job.corrupt:
            yield call_id, "corrupt", BurstmapError(job.corrupt[call_id])
            continue
        if call_id not in job.records:
            yield call_id, "pending", None
            continue
        record = job.records[call_id]
        value, error = outcome(session.storage, key, job.manifest.job_id, record)
        if error is None and isinstance(value, Deferred):
            try:
                value = value.load()
            except Exception as e:
                error = e
        yield call_id, record.state.value, error if error is not None else value


@main.command("results")
@click.argument("job_id", metavar="JOB")
@click.option("--out", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write a pickle of the list of results (an exception in place of a failed call, "
                   "None for a pending one) instead of printing them.")
@pass_session
def results_command(session: Session, job_id: str, out: str | None) -> None:
    """Print each call's result (its repr), or its error. Exits 1 if a call failed."""
    job = session.job(job_id)
    outcomes = list(_outcomes(session, job))
    if out:
        with open(out, "wb") as f:
            pickle.dump([value for _, _, value in outcomes], f)
        click.echo(f"wrote {len(outcomes)} results to {out}")
    else:
        for call_id, state, value in outcomes:
            shown = f"{type(value).__name__}: {_one_line(value)}" if isinstance(value, BaseException) else repr(value)
            click.echo(f"{call_id}\t{state}\t{shown}")
    failed = sum(isinstance(value, BaseException) and state != "corrupt" for _, state, value in outcomes)
    unverified = sum(state == "corrupt" for _, state, _ in outcomes)
    said = [f"{failed} of {len(outcomes)} calls failed"] if failed else []
    if unverified:
        said.append(f"{unverified} of {len(outcomes)} calls could not be verified: wrong key? (their records fail "
                    "HMAC verification: signed with another secret key, or altered)")
    if said:
        _fail("; ".join(said))


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    click.get_current_context().exit(1)


def _echo_log(job: JobRecords, call_id: int, header: bool) -> None:
    record = job.records[call_id]
    if header:
        click.echo(f"--- call {call_id} ({record.state.value}, {record.worker}) ---")
    log = record.log.decode("utf-8", "replace")
    if log:
        click.echo(log, nl=not log.endswith("\n"))
    if record.error and record.error.get("traceback"):
        click.echo(record.error["traceback"].rstrip("\n"))


@main.command("logs")
@click.argument("job_id", metavar="JOB")
@click.argument("call_id", metavar="[CALL]", type=click.IntRange(min=0), required=False)
@pass_session
def logs_command(session: Session, job_id: str, call_id: int | None) -> None:
    """Print what calls wrote to stdout and stderr, and the traceback of failed ones.

    Without CALL: every finished call that printed something or failed.
    """
    job = session.job(job_id)
    if call_id is None:
        for cid in sorted(job.records):
            record = job.records[cid]
            if record.log or record.error:
                _echo_log(job, cid, header=True)
        return
    if call_id >= job.manifest.n_calls:
        raise click.BadParameter(f"job {job_id} has calls 0 to {job.manifest.n_calls - 1}", param_hint="CALL")
    if call_id in job.corrupt:
        _fail(f"the status record of call {call_id} is corrupt: {job.corrupt[call_id]}")
    if call_id not in job.records:
        _fail(f"call {call_id} has not finished yet")
    _echo_log(job, call_id, header=False)


# ---- stats, plot -----------------------------------------------------------------------------------

def _print_summary(summary: dict[str, Any]) -> None:
    overhead = summary["overhead_fraction"]
    throughput = summary["throughput"]
    lines = [
        f"calls        {summary['calls']}: {summary['done']} ok, {summary['failed']} failed, "
        f"{summary['pending']} pending, {summary['corrupt']} corrupt",
        f"wall time    {_seconds(summary['wall_time'])} (submit to last end)",
        f"throughput   {'-' if throughput is None else f'{throughput:.1f} calls/s'}",
        f"median call  {_seconds(summary['median_duration'])}",
        f"max queue    {_seconds(summary['queue_wait_max'])}",
        f"overhead     {'-' if overhead is None else f'{overhead:.1%}'} of worker time outside the function",
    ]
    if summary["cost"] is not None:
        lines.append(f"lambda cost  ${summary['cost']:.6f} ({summary['gb_seconds']:.2f} GB-s, compute only)")
    click.echo("\n".join(lines))
    stragglers = summary["stragglers"]
    for s in stragglers[:_STRAGGLERS_SHOWN]:
        click.echo(f"straggler    call {s['call_id']}: {_seconds(s['duration'])} on {s['worker']}")
    if len(stragglers) > _STRAGGLERS_SHOWN:
        click.echo(f"stragglers   {len(stragglers) - _STRAGGLERS_SHOWN} more, the slowest shown above "
                   "(--csv lists every call)")


@main.command("stats")
@click.argument("job_id", metavar="JOB")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per call instead of the summary.")
@pass_session
def stats_command(session: Session, job_id: str, as_csv: bool) -> None:
    """Show a job's timings: wall time, throughput, overhead, stragglers; or every call as CSV."""
    report = job_stats(session.storage, session.config.secret(), session.prefix, job_id)
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=CALL_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(report["calls"])
        return
    click.echo(f"job {job_id}: {', '.join(report['functions'])}")
    _print_summary(report["summary"])


@main.command("plot")
@click.argument("job_id", metavar="JOB")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The PNG file to write.")
@pass_session
def plot_command(session: Session, job_id: str, output: str) -> None:
    """Draw a job's timeline by worker and its histogram of call durations into a PNG."""
    from .plot import plot
    report = job_stats(session.storage, session.config.secret(), session.prefix, job_id)
    click.echo(f"wrote {plot(report, output)}")


# ---- clean ---------------------------------------------------------------------------------------

class _Duration(click.ParamType):
    """A duration such as ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``, in seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(value))
        if not match:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 12h, 7d or 2w", param, ctx)
        return float(match[1]) * _UNITS[match[2]]


def _chosen(session: Session, job_id: str | None, older_than: float | None, all_jobs: bool) -> list[JobSummary]:
    if sum((job_id is not None, older_than is not None, all_jobs)) != 1:
        raise click.UsageError("give exactly one of JOB, --older-than or --all")
    if job_id is not None:
        return [session.job(job_id).summary()]
    jobs = [j for j in list_jobs(session.storage, session.config.secret(), session.prefix) if isinstance(j, JobSummary)]
    if older_than is not None:
        cutoff = time.time() - older_than
        jobs = [j for j in jobs if j.submitted < cutoff]
    return jobs


def _delete(storage: Storage, layout: Layout) -> None:
    """Delete a job's objects, its manifest last so that an interrupted clean can be re-run."""
    storage.delete_prefix(layout.root)
    storage.delete([layout.manifest])


@main.command("clean")
@click.argument("job_id", metavar="[JOB]", required=False)
@click.option("--older-than", type=_Duration(), help="Delete the jobs submitted longer ago than this (7d, 12h...).")
@click.option("--all", "all_jobs", is_flag=True, help="Delete every job under the prefix.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Delete jobs that are still running too.")
@pass_session
def clean_command(session: Session, job_id: str | None, older_than: float | None, all_jobs: bool,
                  yes: bool, force: bool) -> None:
    """Delete jobs from the store: one JOB, those older than a duration, or all.

    A job still running (calls pending and its client watching, or for older jobs activity within
    the last hour) is kept unless --force; an abandoned one is deleted.
    """
    jobs = _chosen(session, job_id, older_than, all_jobs)
    now = time.time()
    running = [j for j in jobs if not force and _liveness(j, session.storage, now) == "running"]
    jobs = [j for j in jobs if j not in running]
    for job in running:
        click.echo(f"Error: job {job.job_id} is still running ({job.pending} calls pending); "
                   f"use --force to delete it anyway", err=True)
    if jobs and not yes:
        click.confirm(f"Delete {len(jobs)} job(s): {', '.join(j.job_id for j in jobs)}?", abort=True)
    for job in jobs:
        _delete(session.storage, job.layout)
    click.echo(f"deleted {len(jobs)} job(s)")
    if running:
        click.get_current_context().exit(1)


@main.command("replay")
@click.argument("job_id", metavar="JOB")
@click.argument("call_id", metavar="CALL", type=click.IntRange(min=0))
@click.option("--pdb", "debug", is_flag=True, help="Open the debugger where the call raises.")
@pass_session
def replay_command(session: Session, job_id: str, call_id: int, debug: bool) -> None:
    """Run one call of a stored job again, here, with the same function and input; nothing is written.

    Breakpoints in your function work. The call's own exception is shown with its full traceback.
    """
    executor = Executor(storage=session.storage, prefix=session.prefix)
    try:
        value = executor.replay(job_id, call_id)
    except BurstmapError:
        raise
    except Exception:
        if not debug:
            raise
        pdb.post_mortem(sys.exc_info()[2])
        raise SystemExit(1) from None
    click.echo(repr(value))


if __name__ == "__main__":
    # Run the imported module's group, not this __main__ copy, so commands other modules add are there.
    from burstmap.cli import main as _main
    _main()
