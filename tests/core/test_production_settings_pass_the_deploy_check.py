"""With the documented production settings, `manage.py check --deploy` finds nothing to warn about:
secure-only cookies, HSTS and HTTPS redirects come with TOLLGATE_HTTPS."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def deploy_check(**env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLGATE_", "SECURE_"))}
    environment.update(DEBUG="false", SECRET_KEY=secrets.token_urlsafe(60), ALLOWED_HOSTS="tollgate.example.com",
                       TOLLGATE_ENGINE="none", **env)
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=120)


def test_production_settings_pass_the_deploy_check():
    result = deploy_check(TOLLGATE_HTTPS="true", TOLLGATE_BEHIND_TLS_PROXY="true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_https_the_deploy_check_says_what_is_missing():
    result = deploy_check()
    assert result.returncode != 0
    for check in ("security.W004", "security.W012", "security.W016"):  # HSTS, session and CSRF cookies
        assert check in result.stderr + result.stdout
