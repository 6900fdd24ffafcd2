"""Config loading: Bifrost's shape, env values, and errors that name the key path."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import ConfigError, load_config, local_model_installed, parse_config
from tests.helpers.processes import without_module


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "proxy.json"
    path.write_bytes(orjson.dumps(document))
    return path


def test_bifrost_shape(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            {
                "client": {"max_request_body_size_mb": 8, "allow_direct_keys": True},
                "providers": {
                    "openai": {
                        "keys": [{"name": "main", "value": "env.OPENAI_API_KEY", "models": ["*"]}],
                        "network_config": {
                            "max_retries": 2,
                            "retry_backoff_initial": 100,
                            "retry_backoff_max": 900,
                            "default_request_timeout_in_seconds": 12.5,
                        },
                        "send_back_raw_response": True,
                    },
                    "groq": {
                        "keys": [{"value": "gsk-1", "models": ["whisper-large-v3"], "weight": 2}],
                        "custom_provider_config": {"base_provider_type": "openai"},
                        "network_config": {"base_url": "https://api.groq.com/openai/"},
                    },
                },
                "proxy": {"max_fields": 10, "max_field_bytes": 100, "spool_dir": str(tmp_path)},
            },
        ),
        {"OPENAI_API_KEY": "sk-from-env"},
    )
    assert config.client.max_request_body_bytes == 8 * 1024 * 1024
    assert config.client.allow_direct_keys is True
    openai = config.providers["openai"]
    assert openai.keys[0].value == "sk-from-env"
    assert openai.network.base_url == "https://api.openai.com"
    assert openai.network.max_retries == 2
    assert openai.network.retry_backoff_initial_ms == 100
    assert openai.network.request_timeout_s == 12.5
    assert openai.send_back_raw_response is True
    groq = config.providers["groq"]
    assert groq.kind == "openai"
    assert groq.network.base_url == "https://api.groq.com/openai"
    assert groq.lists("whisper-large-v3")
    assert not groq.lists("whisper-1")
    assert config.proxy.max_fields == 10
    assert config.proxy.spool_dir == str(tmp_path)


def test_secret_values_are_not_in_repr() -> None:
    config = parse_config({"providers": {"openai": {"keys": [{"value": "sk-secret-1"}]}}}, {})
    assert "sk-secret-1" not in repr(config)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"providers": {"openai": {"keys": [{"value": "env.MISSING_KEY"}]}}},
            "providers.openai.keys[0].value: environment variable MISSING_KEY is not set",
        ),
        (
            {"providers": {"openai": {"network_config": {"max_retries": "two"}}}},
            "providers.openai.network_config.max_retries: expected an integer, got a string",
        ),
        (
            {"client": {"max_request_body_size_mb": 0}},
            "client.max_request_body_size_mb: must be at least 1, got 0",
        ),
        (
            {"providers": {"openai": {"keys": {"value": "x"}}}},
            "providers.openai.keys: expected an array, got an object",
        ),
        (
            {"providers": {"openai": {"keys": [{"name": "no value"}]}}},
            "providers.openai.keys[0].value: required",
        ),
        (
            {"providers": {"vllm": {"custom_provider_config": {"base_provider_type": "openai"}}}},
            "providers.vllm.network_config.base_url: required for provider 'vllm'",
        ),
        (
            {"providers": {"x": {"custom_provider_config": {"base_provider_type": "cohere"}}}},
            "providers.x.custom_provider_config.base_provider_type: unsupported value 'cohere'",
        ),
        (
            {"providers": {"openai": {"send_back_raw_response": "yes"}}},
            "providers.openai.send_back_raw_response: expected true or false, got a string",
        ),
        ({"providers": []}, "providers: expected an object, got an array"),
        (
            {"proxy": {"spool_dir": "/nonexistent/spool"}},
            "proxy.spool_dir: /nonexistent/spool is not a writable directory",
        ),
        ([], ": expected an object, got an array"),
    ],
)
def test_errors_name_the_key_path(document: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(document, {})
    assert str(raised.value).startswith(message)


def test_unknown_keys_and_providers_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.config"):
        config = parse_config(
            {
                "framework": {"pricing": {}},
                "client": {"drop_excess_requests": True},
                "providers": {
                    "anthropic": {"keys": [{"value": "x"}]},
                    "openai": {"keys": [{"value": "k", "aliases": {}}]},
                },
            },
            {},
        )
    assert list(config.providers) == ["openai"]
    messages = [r.getMessage() for r in caplog.records]
    assert "config: ignoring unknown key framework" in messages
    assert "config: ignoring unknown key client.drop_excess_requests" in messages
    assert "config: ignoring unknown key providers.openai.keys[0].aliases" in messages
    assert any("ignoring provider 'anthropic'" in m for m in messages)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.json", {})
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(broken, {})


def test_defaults_without_a_file() -> None:
    # The embedded model serves by default where the local extra is installed.
    expected = ["local"] if local_model_installed() else []
    assert list(load_config(None, {}).providers) == expected
    config = load_config(None, {"OPENAI_API_KEY": "sk-env"})
    assert list(config.providers) == [*expected, "openai"]
    assert config.providers["openai"].keys[0].value == "sk-env"
    assert config.providers["openai"].network.base_url == "https://api.openai.com"


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int | None, bytes]:
    """``python -m proxy ARGS`` to its end (a start-up failure): its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, stderr


async def test_cli_reports_config_errors_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, {"providers": {"openai": {"keys": [{"value": "env.NOPE_NOT_SET"}]}}})
    returncode, stderr = await run_cli("--config", str(path))
    assert returncode == 2
    assert b"providers.openai.keys[0].value: environment variable NOPE_NOT_SET is not set" in stderr


async def test_cli_serves(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--port", str(port), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the proxy did not start")
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def test_cli_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(tmp_path, {"proxy": {"web_ui": False}})
        returncode, stderr = await run_cli("--port", str(port), "--config", str(path))
    assert returncode == 1
    assert b"Traceback" not in stderr
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert "choose another --port" in last


async def test_cli_redis_url_without_the_extra_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, {"proxy": {"redis_url": "redis://127.0.0.1:1/0"}})
    returncode, stderr = await run_cli("--config", str(path), env=without_module(tmp_path, "redis"))
    assert returncode == 2
    assert b"Traceback" not in stderr
    assert b"proxy.redis_url: the Redis client is not installed" in stderr


def test_tracing_is_off_unless_a_collector_is_named() -> None:
    assert not parse_config({}, {}).proxy.tracing.enabled
    assert not load_config(None, {}).proxy.tracing.enabled
    tracing = parse_config(
        {
            "proxy": {
                "tracing": {
                    "otlp_endpoint": "http://collector:4318/",
                    "service_name": "stt-gateway",
                    "resource_attributes": {"deployment.environment": "env.STAGE"},
                    "schedule_delay_ms": 200,
                }
            }
        },
        {"STAGE": "staging", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://elsewhere:4318"},
    ).proxy.tracing
    assert tracing.traces_url == "http://collector:4318/v1/traces"  # the file's, first
    assert tracing.service_name == "stt-gateway"
    assert tracing.resource_attributes == {"deployment.environment": "staging"}
    assert tracing.schedule_delay_ms == 200
    assert "collector" not in repr(tracing)  # an endpoint may carry a password
    # The OpenTelemetry environment, with a file that does not say, or with none.
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example", "OTEL_SERVICE_NAME": "stt"}
    for config in (parse_config({}, environ), load_config(None, environ)):
        tracing = config.proxy.tracing
        assert tracing.traces_url == "https://otel.example/v1/traces"
        assert (tracing.service_name, tracing.schedule_delay_ms) == ("stt", 5000)


@pytest.mark.parametrize(
    ("tracing", "environ", "message"),
    [
        (
            {"otlp_endpoint": "collector:4318"},
            {},
            "proxy.tracing.otlp_endpoint: the collector's OTLP/HTTP endpoint is an http:// or "
            "https:// URL",
        ),
        (
            {},
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://collector:4317"},
            "OTEL_EXPORTER_OTLP_ENDPOINT: the collector's OTLP/HTTP endpoint is an http://",
        ),
        (
            {"otlp_endpoint": "http://c:4318", "resource_attributes": {"team": 7}},
            {},
            "proxy.tracing.resource_attributes.team: expected a string, got a number",
        ),
        (
            {"otlp_endpoint": "http://c:4318", "schedule_delay_ms": 0},
            {},
            "proxy.tracing.schedule_delay_ms: must be at least 1",
        ),
    ],
)
def test_tracing_errors_name_the_setting(
    tracing: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"proxy": {"tracing": tracing}}, environ)
    assert str(raised.value).startswith(message)


async def test_cli_tracing_without_the_extra_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, {"proxy": {"tracing": {"otlp_endpoint": "http://127.0.0.1:4318"}}})
    hidden = without_module(tmp_path, "opentelemetry")
    returncode, stderr = await run_cli("--config", str(path), env=hidden)
    assert returncode == 2
    assert b"Traceback" not in stderr
    assert (
        b"proxy.tracing.otlp_endpoint: OpenTelemetry is not installed; "
        b"install the tracing extra: pip install '.[tracing]'"
    ) in stderr
    # The environment's endpoint asks for it as much.
    environ = {**hidden, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    returncode, stderr = await run_cli(env=environ)
    assert returncode == 2
    assert b"OTEL_EXPORTER_OTLP_ENDPOINT: OpenTelemetry is not installed" in stderr


@pytest.mark.parametrize(
    "secret",
    [
        "c2VjcmV0IG9mIDMyIGJ5dGVzIGxlbmd0aCBhbmQgbW9yZQ==",  # no whsec_
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"short").decode(),  # 5 bytes: no secret
        "whsec_",
    ],
)
@pytest.mark.parametrize("where", ["proxy.jobs", "governance.virtual_keys[0]"])
def test_a_webhook_secret_that_cannot_sign_stops_the_start(secret: str, where: str) -> None:
    raw: dict[str, Any] = (
        {"proxy": {"jobs": {"webhook_secret": secret}}}
        if where == "proxy.jobs"
        else {"governance": {"virtual_keys": [{"value": "sk-bf-x", "webhook_secret": secret}]}}
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, {})
    message = str(raised.value)
    assert message.startswith(f"{where}.webhook_secret: expected whsec_ and a base64 key")
    assert secret not in message or secret == "whsec_"  # a secret is not repeated in logs


def test_a_webhook_secret_that_can_sign_is_taken() -> None:
    secret = "whsec_" + base64.b64encode(b"sixteen bytes ok").decode()
    config = parse_config({"proxy": {"jobs": {"webhook_secret": secret}}}, {})
    assert config.proxy.jobs.webhook_secret == secret
