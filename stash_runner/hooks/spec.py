"""Hooks as Stash's objects declare them (stash.appscode.com/v1beta1 BackupHooks/RestoreHooks, kmodules prober
Handler), read into dataclasses with one-line errors naming the object and field, and the summary their templates
and execution policies see (Stash's ``Summary``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stash_runner.errors import BadInput

#: Stash's HookExecutionPolicy values; a postRestore hook takes only the first three
ALWAYS, ON_SUCCESS, ON_FAILURE, ON_FINAL_RETRY_FAILURE = "Always", "OnSuccess", "OnFailure", "OnFinalRetryFailure"
POLICIES = (ALWAYS, ON_SUCCESS, ON_FAILURE, ON_FINAL_RETRY_FAILURE)
#: hook types, as Stash's run-hook --hook-type names them
PRE_BACKUP, POST_BACKUP, PRE_RESTORE, POST_RESTORE = "preBackup", "postBackup", "preRestore", "postRestore"
HOOK_TYPES = (PRE_BACKUP, POST_BACKUP, PRE_RESTORE, POST_RESTORE)


@dataclass(frozen=True)
class Header:
    name: str
    value: str


@dataclass(frozen=True)
class HTTPAction:
    """httpGet, or httpPost with ``body`` or ``form`` (key -> values)."""

    port: int | str
    path: str = "/"
    host: str = ""
    scheme: str = "HTTP"
    headers: tuple[Header, ...] = ()
    body: str = ""
    form: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class TCPAction:
    port: int | str
    host: str = ""


@dataclass(frozen=True)
class Handler:
    """One hook's actions; all that are set run, in Stash's order exec -> httpGet -> httpPost -> tcpSocket."""

    exec_command: tuple[str, ...] = ()
    http_get: HTTPAction | None = None
    http_post: HTTPAction | None = None
    tcp_socket: TCPAction | None = None
    container: str = ""

    def empty(self) -> bool:
        return not (self.exec_command or self.http_get or self.http_post or self.tcp_socket)


@dataclass(frozen=True)
class Hook:
    type: str
    handler: Handler
    policy: str = ALWAYS


@dataclass(frozen=True)
class Hooks:
    """A target's (or a batch's global) hooks: pre and post, either may be missing."""

    pre: Hook | None = None
    post: Hook | None = None


@dataclass(frozen=True)
class Summary:
    """What a hook's templates and execution policy see (Stash's v1beta1 Summary)."""

    name: str = ""
    namespace: str = ""
    invoker_api_group: str = "stash.appscode.com"
    invoker_kind: str = ""
    invoker_name: str = ""
    target_api_version: str = ""
    target_kind: str = ""
    target_name: str = ""
    target_namespace: str = ""
    phase: str = ""
    duration: str = ""
    error: str = ""
    retry_left: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)

    def data(self) -> dict:
        """The template data, with Stash's field names (.Name, .Invoker.Kind, .Status.Phase, ...)."""
        return {"Name": self.name, "Namespace": self.namespace,
                "Invoker": {"APIGroup": self.invoker_api_group, "Kind": self.invoker_kind, "Name": self.invoker_name},
                "Target": {"APIVersion": self.target_api_version, "Kind": self.target_kind,
                           "Name": self.target_name, "Namespace": self.target_namespace},
                "Status": {"Phase": self.phase, "Duration": self.duration, "Error": self.error},
                "RetryLeft": self.retry_left}


def _port(value: object, where: str) -> int | str:
    if isinstance(value, bool) or value is None or value == "":
        raise BadInput(f"{where}.port is missing")
    if isinstance(value, int):
        if not 0 < value < 65536:
            raise BadInput(f"{where}.port: {value} is not a port number")
        return value
    text = str(value)
    return int(text) if text.isdigit() else text


def _str(obj: Mapping, key: str, where: str, default: str = "") -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise BadInput(f"{where}.{key} must be a string")
    return str(value)


def _headers(raw: object, where: str) -> tuple[Header, ...]:
    if raw in (None, []):
        return ()
    if not isinstance(raw, list):
        raise BadInput(f"{where}.httpHeaders must be a list")
    out = []
    for i, h in enumerate(raw):
        if not isinstance(h, dict) or not h.get("name"):
            raise BadInput(f"{where}.httpHeaders[{i}].name is missing")
        out.append(Header(str(h["name"]), _str(h, "value", f"{where}.httpHeaders[{i}]")))
    return tuple(out)


def _http(raw: object, where: str, post: bool) -> HTTPAction:
    if not isinstance(raw, dict):
        raise BadInput(f"{where} must be a mapping")
    scheme = _str(raw, "scheme", where, "HTTP").upper()
    if scheme not in ("HTTP", "HTTPS"):
        raise BadInput(f"{where}.scheme: {scheme!r} is not HTTP or HTTPS")
    form: list[tuple[str, tuple[str, ...]]] = []
    if post and raw.get("form"):
        if not isinstance(raw["form"], list):
            raise BadInput(f"{where}.form must be a list")
        for i, f in enumerate(raw["form"]):
            if not isinstance(f, dict) or not f.get("key"):
                raise BadInput(f"{where}.form[{i}].key is missing")
            values = f.get("values") or []
            if not isinstance(values, list):
                raise BadInput(f"{where}.form[{i}].values must be a list")
            form.append((str(f["key"]), tuple(str(v) for v in values)))
    return HTTPAction(_port(raw.get("port"), where), _str(raw, "path", where, "/") or "/", _str(raw, "host", where),
                      scheme, _headers(raw.get("httpHeaders"), where), _str(raw, "body", where) if post else "",
                      tuple(form))


def parse_handler(raw: object, where: str) -> Handler:
    if not isinstance(raw, dict):
        raise BadInput(f"{where} must be a mapping")
    command: tuple[str, ...] = ()
    if raw.get("exec") is not None:
        cmd = (raw["exec"] or {}).get("command") if isinstance(raw["exec"], dict) else None
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            raise BadInput(f"{where}.exec.command must be a non-empty list of strings")
        command = tuple(cmd)
    tcp = None
    if raw.get("tcpSocket") is not None:
        t = raw["tcpSocket"]
        if not isinstance(t, dict):
            raise BadInput(f"{where}.tcpSocket must be a mapping")
        tcp = TCPAction(_port(t.get("port"), f"{where}.tcpSocket"), _str(t, "host", f"{where}.tcpSocket"))
    handler = Handler(command,
                      _http(raw["httpGet"], f"{where}.httpGet", post=False) if raw.get("httpGet") is not None else None,
                      _http(raw["httpPost"], f"{where}.httpPost", post=True) if raw.get("httpPost") is not None
                      else None,
                      tcp, _str(raw, "containerName", where))
    if handler.empty():
        raise BadInput(f"{where}: no handler (exec, httpGet, httpPost or tcpSocket)")
    return handler


def _hook(raw: object, hook_type: str, where: str) -> Hook | None:
    if raw is None:
        return None
    handler = parse_handler(raw, where)
    policy = ALWAYS
    if hook_type in (POST_BACKUP, POST_RESTORE):
        policy = _str(raw, "executionPolicy", where, ALWAYS) or ALWAYS
        allowed = POLICIES if hook_type == POST_BACKUP else POLICIES[:3]
        if policy not in allowed:
            raise BadInput(f"{where}.executionPolicy: {policy!r} is not one of {', '.join(allowed)}")
    return Hook(hook_type, handler, policy)


def parse_hooks(raw: object, where: str, *, restore: bool) -> Hooks:
    """``spec.hooks`` (or a member's ``hooks``): preBackup/postBackup, or preRestore/postRestore for a restore."""
    if raw is None:
        return Hooks()
    if not isinstance(raw, dict):
        raise BadInput(f"{where} must be a mapping")
    pre, post = (PRE_RESTORE, POST_RESTORE) if restore else (PRE_BACKUP, POST_BACKUP)
    return Hooks(_hook(raw.get(pre), pre, f"{where}.{pre}"), _hook(raw.get(post), post, f"{where}.{post}"))
