"""The command line: `connectorsync serve` and the help of every command."""

from __future__ import annotations

import signal
import subprocess

import requests

from connectorsync.cli import COMMANDS, main

from .conftest import PYTHON, ROOT, child_env


def test_serve_runs_a_test_server_until_sigterm(tmp_path) -> None:
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "connectorsync",
            "serve",
            "--device",
            "a/b",
            "--path",
            str(tmp_path / "server.db"),
        ],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        apikey = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = requests.get(
            f"{url}/api/v1/", params={"q": "this"}, auth=("", apikey), timeout=5
        )
        assert response.text == "a/b"
        response.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_every_command_has_help(capsys) -> None:
    for name in COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as stop:
            assert stop.code == 0
        assert "usage: connectorsync " + name in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out
