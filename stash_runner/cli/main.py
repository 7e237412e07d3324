"""The ``stash-runner`` command group, its global flags, and how errors become one line and an exit code."""

from __future__ import annotations

import logging
import signal
import sys

import click

from stash_runner import __version__
from stash_runner.errors import Interrupted, RunnerError, one_line

from . import addons, repository, run, run_hook, update_status


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="stash-runner")
@click.option("-v", "--verbose", is_flag=True, help="Also log the dump tools' stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def cli(verbose: bool, quiet: bool) -> None:
    """Back up and restore databases into restic repositories, as Stash's executor."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr, force=True)
    # -v is for our own messages only: the storage SDKs' debug logs print request URLs, and a SAS token
    # or a signed URL in them is a credential.
    logging.getLogger("stash_runner").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    # The SDKs log every request at INFO, and warn of what we retry or report ourselves in one line.
    for sdk in ("azure", "google", "botocore", "boto3", "urllib3", "kubernetes", "opensearch", "elastic_transport",
                "elasticsearch"):
        logging.getLogger(sdk).setLevel(logging.ERROR)


for command in (run.backup, run.restore, *addons.commands(), update_status.update_status, run_hook.run_hook,
                repository.snapshots, repository.dump, repository.forget, repository.prune, repository.check,
                repository.unlock, repository.stats):
    cli.add_command(command)


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted("terminated by SIGTERM")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="stash-runner", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("stash-runner: error: aborted", err=True)
        return 130
    except RunnerError as e:
        click.echo(f"stash-runner: error: {one_line(e)}", err=True)
        return e.exit_code
    except Interrupted as e:
        click.echo(f"stash-runner: error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("stash-runner: error: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    return 0


def entry() -> None:
    sys.exit(main())
