"""Error types. Each maps to one documented exit code (see README)."""


def one_line(text: object) -> str:
    """Text on one line, as an error goes into a message, a status field or an Event."""
    return " ".join(str(text).split())


def first_line(error: BaseException) -> str:
    """The first line of an error's text (a YAML error runs over several), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe(error: BaseException) -> str:
    """An error as one line, or its type's name when it says nothing."""
    return one_line(error) or type(error).__name__


class RunnerError(Exception):
    """Base of the errors the CLI reports as one line and a distinct exit code."""

    exit_code = 1


class BadInput(RunnerError):
    """A missing object, field, key or a wrong flag: nothing was written."""

    exit_code = 2


class WrongPassword(RunnerError):
    """The repository password opens none of the repository's keys."""

    exit_code = 3


class RepositoryError(RunnerError):
    """The repository or its storage failed: unreachable, damaged, locked."""

    exit_code = 4


class RepositoryNotFound(RepositoryError):
    pass


class IntegrityError(RepositoryError):
    """Stored data failed its MAC or hash check."""


class LockedError(RepositoryError):
    pass


class StorageAccessDenied(RunnerError):
    """The storage rejected the credentials, or they lack a permission (a bucket cannot be created)."""

    exit_code = 8


class DatabaseUnreachable(RunnerError):
    exit_code = 5


class ToolFailed(RunnerError):
    """A dump or restore tool (pg_dump, psql, ...) failed."""

    exit_code = 6


class SnapshotNotFound(RunnerError):
    exit_code = 7


class ClusterError(RunnerError):
    """The Kubernetes API server is unreachable or answered with an error we cannot act on."""

    exit_code = 9


class ClusterAccessDenied(ClusterError):
    """The API server refused the credentials (401) or the service account lacks an RBAC permission (403)."""

    exit_code = 10


class HookFailed(RunnerError):
    """A pre/post hook failed (its handler's answer, exit code or connection error is in the message)."""

    exit_code = 11


class HostsFailed(RunnerError):
    """Some hosts of a multi-host backup or restore failed; the others finished (``results``). The exit code is
    the first failure's."""

    def __init__(self, failures: dict[str, Exception], results: list) -> None:
        super().__init__("; ".join(f"host {host}: {describe(e)}" for host, e in failures.items()))
        self.failures = failures
        self.results = results
        self.exit_code = getattr(next(iter(failures.values())), "exit_code", RunnerError.exit_code)


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM so that cleanup runs as for Ctrl-C."""

    exit_code = 143


class TimedOut(Interrupted):
    """The invoker's spec.timeOut passed: the run is stopped as for SIGTERM, with its own exit code."""

    exit_code = 124
