"""Every script in examples/ runs to the end (the demo is `make demo`)."""

from __future__ import annotations

import subprocess

from .conftest import PYTHON, ROOT, child_env


def test_temperature_logger_demo() -> None:
    result = subprocess.run(
        [PYTHON, str(ROOT / "examples" / "temperature_logger.py")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "nothing lost: 5 datapoints wait in the cache" in out
    assert "last error: " in out and "Connection refused" in out
    assert out.count("background sync delivered everything: 0 waiting") == 2
    assert "The server holds 8 datapoints, in order" in out
    assert result.stderr == ""
