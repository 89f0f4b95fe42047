#!/usr/bin/env python3
"""Rewrite docs/screenshots/*.png from a real browser on seeded usage (the README shows them).

Runs tests/e2e/test_screenshots.py with TOLLGATE_SCREENSHOTS_DIR pointing at docs/screenshots, on the
same services as `make test` (override DATABASE_URL / REDIS_URL to point elsewhere):

    .venv/bin/python scripts/screenshots.py
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    env = {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/tollgate", "REDIS_URL": "redis://127.0.0.1:6379/15",
           **os.environ, "TOLLGATE_SCREENSHOTS_DIR": str(ROOT / "docs" / "screenshots")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e/test_screenshots.py"]
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode == 0:
        for png in sorted((ROOT / "docs" / "screenshots").glob("*.png")):
            print(f"{png.relative_to(ROOT)}  {png.stat().st_size // 1000} KB")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
