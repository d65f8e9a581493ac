"""The command line as a user runs it: real processes, real ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import openai
import pytest

EXE = [sys.executable, "-m", "edgeproxy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 20) -> str:
    """Read the process's stdout until a line contains `text`."""
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}; output: {''.join(seen)}")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[providers.deepinfra]\nbase_url = "not a url"\n', "providers.deepinfra.base_url: expected a URL"),
        ("[server]\nworkers = 0\n", "server.workers: expected `int` >= 1"),
        ('[server]\nlisten = "0.0.0.0:8080"\nauth = "none"\n', "server.auth"),
        ("[server\n", "not valid TOML"),
        ('[providers.x]\nbase_url = "http://a"\nsecret = "sk-1"\n', "providers.x.secret: unknown key"),
        ('[models."a/b"]\ncontext_length = 10\nendpoints = [{provider = "zz", model = "m"}]\n',
         "models.a/b.endpoints[0].provider: unknown provider 'zz'"),
    ],
)
def test_bad_config_is_refused_with_the_key_path(tmp_path, toml: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    p = subprocess.run([*EXE, "serve", "--config", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2
    assert expected in p.stderr
    assert "Traceback" not in p.stderr


def test_host_override_cannot_open_auth_none_beyond_loopback(tmp_path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:0"\nauth = "none"\n')
    p = subprocess.run([*EXE, "serve", "--config", str(path), "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "server.auth" in p.stderr and "0.0.0.0" in p.stderr


def test_demo_serves_the_sdk_and_stops_on_sigterm() -> None:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen([*EXE, "demo", "--port", str(port)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env) as proc:
        _use_demo(proc, port)
    assert proc.returncode == 0


def _use_demo(proc: subprocess.Popen, port: int) -> None:
    try:
        out = wait_for(proc, "Stop with Ctrl-C")
        assert f"curl http://127.0.0.1:{port}/v1/chat/completions" in out
        assert "from openai import OpenAI" in out
        key = out.split("Demo key (an account with $10 of credits): ")[1].split()[0]
        assert key.startswith("sk-ep-v1-")
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        r = c.chat.completions.create(model="meta-llama/llama-3.1-70b-instruct",
                                      messages=[{"role": "user", "content": "Hello!"}])
        assert r.choices[0].message.content
        assert r.model_extra["provider"] in ("deepinfra", "together", "groq")
        s = c.chat.completions.create(model="meta-llama/llama-3.1-8b-instruct:free",
                                      messages=[{"role": "user", "content": "Hi"}], stream=True)
        chunks = list(s)
        assert chunks[-1].model_extra["provider"] == "groq" and chunks[-1].usage is not None
        assert chunks[-1].usage.model_extra["cost"] == 0
        for model in ("anthropic/claude-3.5-haiku", "google/gemini-2.5-flash"):
            r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
            assert r.choices[0].message.content and r.usage.model_extra["cost"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_simulate_provider_command(tmp_path) -> None:
    port = free_port()
    with subprocess.Popen([*EXE, "simulate-provider", "--protocol", "openai", "--port",
                           str(port), "--reply", "from the command"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1")) as proc:
        _use_simulator(proc, port)


def _use_simulator(proc: subprocess.Popen, port: int) -> None:
    try:
        wait_for(proc, "listening on")
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert r.choices[0].message.content == "from the command"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
