"""fastlimit.django: the middleware, the @ratelimit decorator and the system
check, in a real Django project served by gunicorn -w 4."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("django")

from servers import WORK_S, WORKER_HEADER, all_workers_up, from_workers  # noqa: E402

from fastlimit.cli.servers import Server, free_port, gunicorn_argv, request  # noqa: E402

PROJECT = textwrap.dedent('''
    import os, time
    from django.http import HttpResponse
    from django.urls import path
    from fastlimit.django import ratelimit

    SECRET_KEY = "test"
    DEBUG = False
    ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
    ROOT_URLCONF = __name__
    MIDDLEWARE = [f"{__name__}.worker_header", "fastlimit.django.RateLimitMiddleware"]

    def worker_header(get_response):
        def middleware(request):
            response = get_response(request)
            response[WORKER_HEADER] = str(os.getpid())
            return response
        return middleware
    FASTLIMIT = {"TABLE": os.environ["TEST_TABLE"], "POLICY": os.environ["TEST_POLICY"]}
    if os.environ.get("TEST_PROXIES"):
        FASTLIMIT["TRUSTED_PROXIES"] = os.environ["TEST_PROXIES"].split(",")
    if os.environ.get("TEST_BAD"):
        FASTLIMIT = {"TABLE": "t", "STORAGE_URI": os.environ["TEST_BAD"]}

    @ratelimit("5/hour;7/day", name="login")
    def login(request):
        time.sleep(WORK_S)  # busy: the next requests go to other workers
        return HttpResponse("ok")

    def healthz(request):
        time.sleep(WORK_S)
        return HttpResponse("ok")

    @ratelimit("1/hour", key="header:x-tenant", block=False)
    def soft(request):
        return HttpResponse("limited" if request.limited else "fresh")

    def plain(request):
        return HttpResponse("plain")

    urlpatterns = [path("login", login), path("soft", soft), path("plain", plain),
                   path("healthz", healthz)]

    from django.core.wsgi import get_wsgi_application
    application = get_wsgi_application()
''').replace("WORK_S", repr(WORK_S)).replace("WORKER_HEADER", repr(WORKER_HEADER))

POLICY = textwrap.dedent('''
    [identities.anonymous]
    rate = "3/1h"
    [routes.views]          # the decorators limit these, not the 3/1h
    match = ["* /login", "* /soft", "GET /healthz"]
    rate = "1000/1h"
    dedicated = true
''')


@pytest.fixture
def project(tmp_path, table_name):
    (tmp_path / "djapp.py").write_text(PROJECT)
    (tmp_path / "policy.toml").write_text(POLICY)
    env = dict(os.environ, TEST_TABLE=table_name, TEST_POLICY=str(tmp_path / "policy.toml"),
               DJANGO_SETTINGS_MODULE="djapp", PYTHONPATH=str(tmp_path))
    return tmp_path, env


@pytest.mark.slow
def test_exact_across_four_gunicorn_workers(project):
    tmp_path, env = project
    port = free_port()
    with Server(gunicorn_argv("djapp:application", port, workers=4), port, env=env,
                cwd=str(tmp_path), log=str(tmp_path / "server.log")) as server:
        server.wait_for_children(4)
        all_workers_up(port, 4)
        logins, workers = from_workers(port, "POST", "/login", 9)
        plain = [request(port, "GET", "/plain") for _ in range(4)]
        soft = [request(port, "GET", "/soft", headers={"x-tenant": t}).body
                for t in ("a", "a", "b")]
    assert len(workers) >= 2, "several workers answered"
    # the decorator's 5/hour binds before the policy's 1000/1h on /login
    assert sorted(r.status for r in logins) == [200] * 5 + [429] * 4, server.log()
    assert {r.headers["x-ratelimit-limit"] for r in logins} <= {"5", "7"}  # the binding one
    denied = next(r for r in logins if r.status == 429)
    assert json.loads(denied.body)["error"]["code"] == "RATE_LIMITED"
    # the policy: 3/1h per IP on every other path
    assert [r.status for r in plain] == [200] * 3 + [429], server.log()
    assert soft == [b"fresh", b"limited", b"fresh"]


def test_a_bad_setting_is_a_system_check_error(project):
    tmp_path, env = project
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); "
         "from django.core.management import call_command; call_command('check')"],
        env=dict(env, TEST_BAD="memory://"), cwd=str(tmp_path), capture_output=True, text=True,
        timeout=120)
    assert done.returncode != 0
    assert "fastlimit.E001" in done.stderr and "memory:// is per process" in done.stderr


def test_good_settings_pass_the_check(project):
    tmp_path, env = project
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); "
         "from django.core.management import call_command; call_command('check')"],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_policy_without_an_anonymous_rule_is_a_system_check_warning(project):
    tmp_path, env = project
    (tmp_path / "policy.toml").write_text('[identities.token]\nrate = "100/1h"\n')
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); "
         "from django.core.management import call_command; call_command('check')"],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    # a warning: Django's check still passes, and says what to add
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "fastlimit.W002" in out, out
    assert "no [identities.anonymous] rule" in out
    assert 'rate = "unlimited" to say so' in out


@pytest.mark.slow
def test_trusted_proxies_tell_the_clients_behind_them_apart(project):
    tmp_path, env = project
    port = free_port()
    with Server(gunicorn_argv("djapp:application", port, workers=2), port,
                env=dict(env, TEST_PROXIES="127.0.0.1"), cwd=str(tmp_path),
                log=str(tmp_path / "server.log")) as server:
        server.wait_for_children(2)
        first = [request(port, "GET", "/plain", headers={"x-forwarded-for": "10.0.0.1"})
                 for _ in range(4)]
        other = request(port, "GET", "/plain", headers={"x-forwarded-for": "10.0.0.2"})
    # the policy's 3/1h per IP, per client behind the proxy
    assert [r.status for r in first] == [200, 200, 200, 429], server.log()
    assert other.status == 200 and other.headers["x-ratelimit-remaining"] == "2"


def test_override_settings_applies_from_the_next_request(project):
    """Django's test client with override_settings: ENABLED=False lets every
    request through, and leaving the block limits again."""
    tmp, env = project
    script = textwrap.dedent('''
        import django
        django.setup()
        from django.test import Client, override_settings
        from django.conf import settings
        c = Client()
        before = [c.get("/plain").status_code for _ in range(4)]
        with override_settings(FASTLIMIT=dict(settings.FASTLIMIT, ENABLED=False)):
            off = [c.get("/login").status_code for _ in range(8)]
        after = [c.get("/plain").status_code for _ in range(2)]
        print(before, off, after)
    ''')
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(tmp),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # the anonymous 3/h; nothing counted while disabled; the same count after
    assert out.stdout.strip() == "[200, 200, 200, 429] [200, 200, 200, 200, 200, 200, 200, " \
                                 "200] [429, 429]"
