"""Hook templates and handlers against real loopback servers: HTTP, HTTPS (self-signed), TCP listeners, a port
nobody listens on, a server that never answers; exec through a fake PodExec (the real pods/exec is tested
elsewhere)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stash_runner.errors import BadInput, HookFailed
from stash_runner.hooks.probe import MAX_MESSAGE, run_handler, sniff_content_type
from stash_runner.hooks.spec import Handler, Header, HTTPAction, Summary, TCPAction
from stash_runner.hooks.template import render

from .servers import self_signed_cert

SUMMARY = Summary(name="sess-1", namespace="demo", invoker_kind="BackupConfiguration", invoker_name="nightly",
                  target_api_version="appcatalog.appscode.com/v1alpha1", target_kind="AppBinding",
                  target_name="pg", target_namespace="db", phase="Failed", duration="1m30s",
                  error='pg_dump: "users" <denied> & \\ failed', retry_left=2)
OK = Summary(name="sess-2", namespace="demo", phase="Succeeded", duration="12s")


# --- loopback servers ---------------------------------------------------------------------------------------------

class Recorder:
    """An HTTP(S) server on 127.0.0.1 that records each request in ``events`` (shared, to see the order) and answers
    by path: ``routes[path] = (status, extra headers)``, 200 otherwise."""

    def __init__(self, events: list, name: str, tls: ssl.SSLContext | None = None, family=socket.AF_INET) -> None:
        self.events, self.name, self.requests = events, name, []
        self.routes: dict[str, tuple[int, dict[str, str]]] = {}
        recorder = self

        class Handle(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append({"method": self.command, "path": self.path, "headers": self.headers,
                                          "body": body})
                recorder.events.append((recorder.name, self.command, self.path))
                status, extra = recorder.routes.get(self.path.partition("?")[0], (200, {}))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.server = Server(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0), Handle)
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Listener:
    """A TCP listener that never accepts: a connection shows in its queue; a request sent to it is never answered
    (the kernel completes the handshake), which is the stalling server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        self.sock.setblocking(False)
        n = 0
        try:
            while True:
                self.sock.accept()[0].close()
                n += 1
        except BlockingIOError:
            return n

    def close(self) -> None:
        self.sock.close()


class FakePodExec:
    """Records what would run in the pod and answers with a given exit code and output."""

    def __init__(self, events: list, code: int = 0, output: str = "", error: Exception | None = None) -> None:
        self.events, self.code, self.output, self.error = events, code, output, error
        self.calls: list[tuple[list[str], str, float]] = []

    def run(self, command: Sequence[str], container: str, timeout: float) -> tuple[int, str]:
        self.calls.append((list(command), container, timeout))
        self.events.append(("exec", command[0]))
        if self.error:
            raise self.error
        return self.code, self.output


@pytest.fixture
def events() -> list:
    return []


@pytest.fixture
def http_servers(events) -> Iterator:
    made: list[Recorder] = []

    def make(name: str = "http", **kw) -> Recorder:
        made.append(Recorder(events, name, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def dead_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(handler: Handler, summary: Summary = SUMMARY, pod_exec=None, timeout: float = 5.0) -> str:
    return run_handler(handler, summary, pod_exec=pod_exec, default_host="127.0.0.1", timeout=timeout)


# --- templates ----------------------------------------------------------------------------------------------------

def test_every_summary_field_renders() -> None:
    text = ("{{ .Name }}|{{.Namespace}}|{{ .Invoker.APIGroup }}|{{ .Invoker.Kind }}|{{ .Invoker.Name }}|"
            "{{ .Target.APIVersion }}|{{ .Target.Kind }}|{{ .Target.Name }}|{{ .Target.Namespace }}|"
            "{{ .Status.Phase }}|{{ .Status.Duration }}|{{ .Status.Error }}|{{ .RetryLeft }}")
    assert render(text, SUMMARY).split("|") == [
        "sess-1", "demo", "stash.appscode.com", "BackupConfiguration", "nightly",
        "appcatalog.appscode.com/v1alpha1", "AppBinding", "pg", "db", "Failed", "1m30s",
        'pg_dump: "users" <denied> & \\ failed', "2"]


def test_error_is_verbatim_and_result_trimmed() -> None:
    # text/template does not escape; Stash trims the rendered text
    assert render('  {"text": "{{ .Status.Error }}"}\n', SUMMARY) == '{"text": "pg_dump: "users" <denied> & \\ failed"}'


def test_text_without_actions_is_untouched() -> None:
    # Stash renders (and so trims) only text that contains "{{"
    assert render("  plain body \n", SUMMARY) == "  plain body \n"


def test_trim_markers() -> None:
    assert render("a  \n {{- .Name -}} \n  b", SUMMARY) == "asess-1b"
    assert render("a {{- .Name }} b", SUMMARY) == "asess-1 b"
    assert render("a {{ .Name -}} b", SUMMARY) == "a sess-1b"
    assert render("x{{-3}}", SUMMARY) == "x-3"  # "{{-3" is the number -3, not a trim marker


def test_conditionals_as_stash_tests_them() -> None:
    # stashed/apimachinery pkg/hooks/hook_test.go's conditional body
    text = "{{ if eq .Status.Phase `Succeeded`}}Succeeded{{ else }}Failed. Reason: {{ .Status.Error }}{{ end}}"
    assert render(text, OK) == "Succeeded"
    assert render(text, SUMMARY) == 'Failed. Reason: pg_dump: "users" <denied> & \\ failed'
    chain = '{{ if eq .Status.Phase "Succeeded" }}ok{{ else if eq .Status.Phase "Failed" }}bad{{ else }}?{{ end }}'
    assert (render(chain, OK), render(chain, SUMMARY), render(chain, Summary(phase="Running"))) == ("ok", "bad", "?")
    assert render("{{ if .Status.Error }}E{{ end }}{{ if not .Status.Error }}none{{ end }}", OK) == "none"
    assert render("{{ if ne .RetryLeft 0 }}retry{{ end }}", SUMMARY) == "retry"


def test_functions_pipelines_comments() -> None:
    assert render("{{ .Status.Phase | upper }}", SUMMARY) == "FAILED"
    assert render('{{ .Status.Error | default "no error" }}', OK) == "no error"
    assert render("{{ and .Name .Status.Phase }}/{{ or .Status.Error .Name }}", OK) == "Succeeded/sess-2"
    assert render("{{/* a comment with }} inside */}}{{ (lower .Status.Phase) }}", OK) == "succeeded"
    assert render('{{ "}}" }}', OK) == "}}"


@pytest.mark.parametrize("text,why", [
    ("{{ .Foo }}", "can't evaluate field Foo"),            # Go: a field the Summary struct lacks is an error
    ("{{ .status.phase }}", "can't evaluate field status"),  # field names are case-sensitive
    ("{{ .Name.First }}", "in type string"),
    ("{{ .Status }}", "whole object"),
    ("{{ .Name", "unclosed action"),
    ("{{ if .Name }}x", "without {{ end }}"),
    ("x {{ end }}", "unexpected"),
    ('{{ printf "%s" .Name }}', 'function "printf"'),
    ("{{ toYaml . }}", 'function "toYaml"'),
    ("{{ range .Name }}{{ end }}", "'range' is not supported"),
    ('{{ eq .RetryLeft "2" }}', "incompatible types"),
    ('{{ "abc }}', "unterminated string"),
    ("{{ }}", "missing value"),
])
def test_bad_templates_are_bad_input(text: str, why: str) -> None:
    with pytest.raises(BadInput) as e:
        render(text, SUMMARY)
    assert why in str(e.value)
    assert "hook template" in str(e.value) and text[:20] in str(e.value)  # names the template


# --- exec ---------------------------------------------------------------------------------------------------------

def test_exec_renders_only_templated_parts_and_passes_the_container(events) -> None:
    pod = FakePodExec(events, output="done\n")
    cmd = ("/bin/sh", "-c", "  echo {{ .Status.Phase }} > /tmp/{{ .Name }}  ", "  {literal} ")
    what = run(Handler(exec_command=cmd, container="postgres"), pod_exec=pod, timeout=7.5)
    assert pod.calls == [(["/bin/sh", "-c", "echo Failed > /tmp/sess-1", "  {literal} "], "postgres", 7.5)]
    assert what == 'exec "/bin/sh" in container "postgres": exit code 0'


def test_exec_failure_names_exit_code_and_last_lines_capped(events) -> None:
    output = "".join(f"line {i}: {'x' * 60}\n" for i in range(400)) + "FATAL: role missing\n"  # > 10 KiB
    pod = FakePodExec(events, code=3, output=output)
    with pytest.raises(HookFailed) as e:
        run(Handler(exec_command=("psql", "-c", "select 1")), pod_exec=pod)
    msg = str(e.value)
    assert e.value.exit_code == 11
    assert msg.startswith('failed to execute "exec" probe: "psql" in the pod\'s first container exited with code 3')
    assert msg.endswith("FATAL: role missing") and "line 0:" not in msg
    assert len(msg) <= MAX_MESSAGE and "\n" not in msg


def test_exec_without_a_pod_fails_and_runs_nothing_after(events, http_servers) -> None:
    srv = http_servers()
    handler = Handler(exec_command=("true",), http_get=HTTPAction(port=srv.port))
    with pytest.raises(HookFailed, match=r"exec hooks need the pod behind the target \(pods/exec\)"):
        run(handler, pod_exec=None)
    assert srv.requests == []


def test_exec_api_error_is_a_hook_failure(events) -> None:
    pod = FakePodExec(events, error=ConnectionResetError("stream closed"))
    with pytest.raises(HookFailed, match="stream closed"):
        run(Handler(exec_command=("true",)), pod_exec=pod)


def test_bad_body_template_runs_nothing(events, http_servers) -> None:
    # Stash renders every template before the first action runs
    srv = http_servers()
    pod = FakePodExec(events)
    handler = Handler(exec_command=("true",), http_post=HTTPAction(port=srv.port, body="{{ .Nope }}"))
    with pytest.raises(BadInput):
        run(handler, pod_exec=pod)
    assert pod.calls == [] and srv.requests == []


# --- order and stopping -------------------------------------------------------------------------------------------

def test_all_actions_run_in_stash_order(events, http_servers, listener) -> None:
    get, post = http_servers("get"), http_servers("post")
    pod = FakePodExec(events)
    handler = Handler(exec_command=("true",), http_get=HTTPAction(port=get.port, path="/ready"),
                      http_post=HTTPAction(port=post.port, path="/notify", body="{{ .Name }}"),
                      tcp_socket=TCPAction(port=listener.port))
    what = run(handler, pod_exec=pod)
    assert events == [("exec", "true"), ("get", "GET", "/ready"), ("post", "POST", "/notify")]
    assert listener.connections() == 1  # tcpSocket ran last
    assert what.split("; ") == ['exec "true" in the pod\'s first container: exit code 0',
                                f"httpGet http://127.0.0.1:{get.port}/ready: 200 OK",
                                f"httpPost http://127.0.0.1:{post.port}/notify: 200 OK",
                                f"tcpSocket 127.0.0.1:{listener.port}: connected"]


def test_first_failure_stops_the_rest(events, http_servers, listener) -> None:
    get, post = http_servers("get"), http_servers("post")
    get.routes["/ready"] = (503, {})
    pod = FakePodExec(events)
    handler = Handler(exec_command=("true",), http_get=HTTPAction(port=get.port, path="/ready"),
                      http_post=HTTPAction(port=post.port, body="x"), tcp_socket=TCPAction(port=listener.port))
    with pytest.raises(HookFailed) as e:
        run(handler, pod_exec=pod)
    assert str(e.value) == (f'failed to execute "httpGet" probe: GET http://127.0.0.1:{get.port}/ready answered '
                            "503 Service Unavailable")
    assert events == [("exec", "true"), ("get", "GET", "/ready")]
    assert post.requests == [] and listener.connections() == 0


def test_failing_exec_stops_http(events, http_servers) -> None:
    srv = http_servers()
    with pytest.raises(HookFailed, match="exited with code 1"):
        run(Handler(exec_command=("false",), http_get=HTTPAction(port=srv.port)), pod_exec=FakePodExec(events, 1))
    assert srv.requests == []


# --- HTTP ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 204, 299, 300, 304, 399])
def test_2xx_and_3xx_succeed(http_servers, status: int) -> None:
    srv = http_servers()
    srv.routes["/s"] = (status, {})
    assert run(Handler(http_get=HTTPAction(port=srv.port, path="/s"))).startswith(f"httpGet http://127.0.0.1:"
                                                                                   f"{srv.port}/s: {status}")


@pytest.mark.parametrize("status", [400, 401, 404, 500, 502])
def test_4xx_and_5xx_fail_with_the_status(http_servers, status: int) -> None:
    srv = http_servers()
    srv.routes["/s"] = (status, {})
    with pytest.raises(HookFailed, match=rf"POST http://127\.0\.0\.1:{srv.port}/s answered {status} "):
        run(Handler(http_post=HTTPAction(port=srv.port, path="/s")))


def test_headers_are_sent_and_never_shown(http_servers) -> None:
    srv = http_servers()
    srv.routes["/hook"] = (403, {})
    headers = (Header("Authorization", "Bearer s3cr3t-token"), Header("X-Multi", "a"), Header("X-Multi", "b"))
    with pytest.raises(HookFailed) as e:
        run(Handler(http_get=HTTPAction(port=srv.port, path="/hook?key=s3cr3t-query", headers=headers)))
    got = srv.requests[0]
    assert got["path"] == "/hook?key=s3cr3t-query"
    assert got["headers"]["Authorization"] == "Bearer s3cr3t-token"
    assert got["headers"].get_all("X-Multi") == ["a", "b"]
    assert got["headers"]["User-Agent"] == "kmodules.xyz/client-go/release-11.0"
    assert "s3cr3t" not in str(e.value) and "403 Forbidden" in str(e.value)


def test_user_agent_and_host_headers_of_the_hook_win(http_servers) -> None:
    srv = http_servers()
    run(Handler(http_get=HTTPAction(port=srv.port, headers=(Header("User-Agent", "mine"),
                                                              Header("Host", "db.example")))))
    got = srv.requests[0]["headers"]
    assert (got["User-Agent"], got["Host"], len(got.get_all("Host"))) == ("mine", "db.example", 1)


def test_empty_host_is_the_default_host(http_servers) -> None:
    srv = http_servers()
    run(Handler(http_get=HTTPAction(port=srv.port, host="")))
    assert len(srv.requests) == 1
    with pytest.raises(HookFailed, match="no host"):
        run_handler(Handler(http_get=HTTPAction(port=srv.port)), SUMMARY, pod_exec=None, default_host="",
                    timeout=2)


def test_path_without_slash_and_string_port(http_servers) -> None:
    srv = http_servers()
    run(Handler(http_get=HTTPAction(port=str(srv.port), path="health z")))
    assert srv.requests[0]["path"] == "/health%20z"


def test_named_port_fails_honestly(http_servers) -> None:
    with pytest.raises(HookFailed, match='named port "http" cannot be resolved outside the pod'):
        run(Handler(http_get=HTTPAction(port="http")))


def test_form_is_urlencoded_sorted_with_repeated_values(http_servers) -> None:
    srv = http_servers()
    form = (("z", ("last",)), ("a", ("1", "2")), ("msg", ("hello world & more",)))
    run(Handler(http_post=HTTPAction(port=srv.port, form=form, body="ignored {{ .Name }}",
                                     headers=(Header("Content-Type", "text/x-mine"),))))
    got = srv.requests[0]
    assert got["body"] == b"a=1&a=2&msg=hello+world+%26+more&z=last"
    assert got["headers"].get_all("Content-Type") == ["application/x-www-form-urlencoded"]


@pytest.mark.parametrize("body,ctype", [
    ('{"text": "{{ .Namespace }}/{{ .Name }}: {{ .Status.Phase }}"}', "application/json"),
    ("backup {{ .Name }} {{ .Status.Phase }}", "text/plain; charset=utf-8"),
    ("<html><body>{{ .Status.Phase }}</body></html>", "text/html; charset=utf-8"),
    ('<?xml version="1.0"?><p>{{ .Name }}</p>', "text/xml; charset=utf-8"),
    ('{"a": {{ .RetryLeft }}}\n{"b": "{{ .Name }}"}', "application/x-ndjson"),
])
def test_body_is_rendered_and_its_content_type_sniffed(http_servers, body: str, ctype: str) -> None:
    srv = http_servers()
    # a user's Content-Type is replaced, as the prober's headers.Set does
    run(Handler(http_post=HTTPAction(port=srv.port, body=body, headers=(Header("Content-Type", "text/x-mine"),))))
    got = srv.requests[0]
    assert got["body"] == render(body, SUMMARY).encode()
    assert got["headers"].get_all("Content-Type") == [ctype]


def test_rendered_json_body_content(http_servers) -> None:
    srv = http_servers()
    run(Handler(http_post=HTTPAction(port=srv.port, body=' {"text": "{{ .Name }} {{ .Status.Phase }}"}\n')))
    assert srv.requests[0]["body"] == b'{"text": "sess-1 Failed"}'


def test_empty_rendered_body_posts_nothing(http_servers) -> None:
    srv = http_servers()
    run(Handler(http_post=HTTPAction(port=srv.port, body="{{ if false }}x{{ end }}",
                                     headers=(Header("Content-Type", "text/x-mine"),))))
    got = srv.requests[0]
    assert got["body"] == b"" and got["headers"]["Content-Length"] == "0"
    assert got["headers"]["Content-Type"] == "text/x-mine"  # no body: the prober leaves the header alone


def test_sniffer_cases() -> None:
    # gabriel-vasile/mimetype's answers, not Go's http.DetectContentType (which says text/plain for JSON)
    assert sniff_content_type('[1, 2]') == "application/json"
    assert sniff_content_type('"just a string"') == "text/plain; charset=utf-8"  # only objects/arrays are JSON
    assert sniff_content_type('{"a": NaN}') == "text/plain; charset=utf-8"
    assert sniff_content_type("  <!DOCTYPE html>") == "text/html; charset=utf-8"
    assert sniff_content_type("<p>x</p>") == "text/html; charset=utf-8"
    assert sniff_content_type("<person>x</person>") == "text/plain; charset=utf-8"
    assert sniff_content_type("a\x01b") == "application/octet-stream"
    long_json = '{"items": [' + ", ".join(f'"{i:05}"' for i in range(1000)) + "]}"  # > the 3072-byte sniff
    assert sniff_content_type(long_json) == "application/json"


def test_same_host_redirects_are_followed(http_servers) -> None:
    srv = http_servers()
    srv.routes["/old"] = (302, {"Location": "/new"})
    srv.routes["/bad"] = (301, {"Location": "/broken"})
    srv.routes["/broken"] = (500, {})
    assert run(Handler(http_get=HTTPAction(port=srv.port, path="/old"))).endswith("/new: 200 OK")
    with pytest.raises(HookFailed, match=r"/broken answered 500"):
        run(Handler(http_get=HTTPAction(port=srv.port, path="/bad")))
    assert [r["path"] for r in srv.requests] == ["/old", "/new", "/bad", "/broken"]


def test_post_redirect_methods(http_servers) -> None:
    srv = http_servers()
    srv.routes["/see-other"] = (303, {"Location": "/landing"})
    srv.routes["/temporary"] = (307, {"Location": "/landing"})
    run(Handler(http_post=HTTPAction(port=srv.port, path="/see-other", body="{{ .Name }}")))
    run(Handler(http_post=HTTPAction(port=srv.port, path="/temporary", body="{{ .Name }}")))
    seen = [(r["method"], r["path"], r["body"]) for r in srv.requests]
    assert seen == [("POST", "/see-other", b"sess-1"), ("GET", "/landing", b""),
                    ("POST", "/temporary", b"sess-1"), ("POST", "/landing", b"sess-1")]


def test_redirect_to_another_host_is_not_followed_and_counts(http_servers) -> None:
    srv, other = http_servers("a"), http_servers("b")
    srv.routes["/away"] = (302, {"Location": f"http://localhost:{other.port}/elsewhere"})
    what = run(Handler(http_get=HTTPAction(port=srv.port, path="/away")))
    assert "302 Found (redirect to another host not followed)" in what
    assert other.requests == []


def test_redirect_loop_stops_after_ten(http_servers) -> None:
    srv = http_servers()
    srv.routes["/loop"] = (302, {"Location": "/loop"})
    with pytest.raises(HookFailed, match="stopped after 10 redirects"):
        run(Handler(http_get=HTTPAction(port=srv.port, path="/loop")))
    assert len(srv.requests) == 10


def test_https_is_not_verified(http_servers, tmp_path) -> None:
    cert, key = self_signed_cert(str(tmp_path))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    srv = http_servers("tls", tls=tls)
    # a verifying client refuses this server ...
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"https://127.0.0.1:{srv.port}/", timeout=5)
    # ... Stash's prober does not verify
    what = run(Handler(http_post=HTTPAction(port=srv.port, scheme="HTTPS", path="/tls", body="{{ .Name }}")))
    assert what == f"httpPost https://127.0.0.1:{srv.port}/tls: 200 OK"
    assert srv.requests[-1]["body"] == b"sess-1"


def test_ipv6_host_is_bracketed(http_servers) -> None:
    try:
        srv = http_servers("v6", family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    what = run(Handler(http_get=HTTPAction(port=srv.port, host="::1", path="/six")))
    assert what == f"httpGet http://[::1]:{srv.port}/six: 200 OK"
    assert srv.requests[0]["headers"]["Host"] == f"[::1]:{srv.port}"


def test_http_connection_refused() -> None:
    port = dead_port()
    with pytest.raises(HookFailed, match=rf"GET http://127\.0\.0\.1:{port}/: connection refused"):
        run(Handler(http_get=HTTPAction(port=port)))


def test_http_server_that_stalls_times_out(listener) -> None:
    start = time.monotonic()
    with pytest.raises(HookFailed, match=r"no answer within 0\.5 s"):
        run(Handler(http_get=HTTPAction(port=listener.port)), timeout=0.5)
    assert time.monotonic() - start < 3


# --- TCP ----------------------------------------------------------------------------------------------------------

def test_tcp_success(listener) -> None:
    assert run(Handler(tcp_socket=TCPAction(port=listener.port))) == f"tcpSocket 127.0.0.1:{listener.port}: connected"
    assert listener.connections() == 1


def test_tcp_refused() -> None:
    port = dead_port()
    with pytest.raises(HookFailed) as e:
        run(Handler(tcp_socket=TCPAction(port=port, host="127.0.0.1")))
    assert str(e.value) == f'failed to execute "tcp" probe: tcpSocket 127.0.0.1:{port}: connection refused'


def test_tcp_timeout() -> None:
    # a listener whose accept queue is full drops new SYNs: connect() hangs until the timeout
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    queued = []
    try:
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            queued.append(c)
        time.sleep(0.2)
        start = time.monotonic()
        with pytest.raises(HookFailed, match=r"no connection within 0\.5 s"):
            run(Handler(tcp_socket=TCPAction(port=port)), timeout=0.5)
        assert 0.4 < time.monotonic() - start < 3
    finally:
        for c in queued:
            c.close()
        full.close()
