"""The ``stash-runner`` command group, its global flags, and how errors become one line and an exit code."""

from __future__ import annotations

import logging
import signal
import sys

import click

from stash_runner import __version__
from stash_runner.errors import Interrupted, RunnerError, one_line

from . import addons, repository, run, run_hook, update_status
from .options import verbosity_params


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
             params=verbosity_params())
@click.version_option(__version__, prog_name="stash-runner")
def cli() -> None:
    """Back up and restore databases into restic repositories, as Stash's executor.

    -v and -q may also be given after the command.
    """


for command in (run.backup, run.restore, *addons.commands(), update_status.update_status, run_hook.run_hook,
                repository.snapshots, repository.dump, repository.forget, repository.prune, repository.check,
                repository.unlock, repository.stats):
    # Every command takes -v/-q too (no command has flags of its own spelled so), so that `backup ... -v` works.
    command.params.extend(verbosity_params())
    cli.add_command(command)


#: an unexpected error (not a RunnerError): README's "unexpected internal error"
UNEXPECTED_EXIT_CODE = RunnerError.exit_code


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted("terminated by SIGTERM")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="stash-runner", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # bare `stash-runner`: the help
            e.show()
            return e.exit_code
        # One line like every other error (click's usage block would be four): the flag and what is wrong.
        click.echo(f"stash-runner: error: {one_line(e.format_message())}", err=True)
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
    except Exception as e:  # a bug, or an error nothing translated: still one line and a documented exit code
        # The traceback is for a bug report, not for a Job's log: only with -v (our logger at DEBUG).
        logging.getLogger("stash_runner").debug("unexpected error", exc_info=e)
        text = one_line(e)
        click.echo(f"stash-runner: error: {type(e).__name__}" + (f": {text}" if text else ""), err=True)
        return UNEXPECTED_EXIT_CODE
    return 0


def entry() -> None:
    sys.exit(main())
