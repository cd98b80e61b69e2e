"""The README's Python server examples, run for real: aiohttp on a socket from
portbroker.acquire, and gunicorn unchanged under `portbroker exec` ($PORTBROKER_CLI)."""

import os
import signal
import subprocess
import sys
import textwrap
import urllib.request

import portbroker


def wait_for(predicate):
    for _ in range(2000):  # daemon round trips, never time
        if predicate():
            return True
    return False


def holders(port):
    return [lease.pid for lease in portbroker.list() if lease.port == port]


def http_get(port):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/", timeout=60) as reply:
        return reply.read().decode()


def test_aiohttp_serves_on_an_acquired_socket_and_the_lease_ends_with_it(tmp_path):
    app = tmp_path / "aiohttp_app.py"
    app.write_text(textwrap.dedent("""\
        import portbroker
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="hello"))
        with portbroker.acquire("http=tcp:127.0.0.1:18810") as sock:
            print("acquired", flush=True)
            web.run_app(app, sock=sock, print=None)
        """))
    server = subprocess.Popen([sys.executable, str(app)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "acquired\n"
        assert holders(18810) == [server.pid]
        assert http_get(18810) == "hello"
    finally:
        server.send_signal(signal.SIGINT)  # aiohttp's graceful stop: the with block exits
        assert server.wait(timeout=60) == 0
        server.stdout.close()
    assert wait_for(lambda: holders(18810) == [])


def test_gunicorn_runs_unchanged_under_portbroker_exec(tmp_path):
    (tmp_path / "wsgi_app.py").write_text(textwrap.dedent("""\
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hello from gunicorn"]
        """))
    server = subprocess.Popen([
        os.environ["PORTBROKER_CLI"], "exec", "--listen", "web=tcp:127.0.0.1:18811", "--",
        sys.executable, "-m", "gunicorn", "--chdir", str(tmp_path), "--workers", "2",
        "wsgi_app:app"], stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:  # gunicorn's log: it names the socket it took over
            if "Listening at: http://127.0.0.1:18811" in line:
                break
        assert holders(18811) == [server.pid]  # exec: the same process
        assert http_get(18811) == "hello from gunicorn"
    finally:
        server.terminate()
        server.stderr.read()
        server.stderr.close()
        assert server.wait(timeout=60) == 0
    assert wait_for(lambda: holders(18811) == [])
