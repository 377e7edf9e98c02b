"""The settings tree: each source overrides the one before, every value says where it came
from, secrets never show, and the README's table is the code's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from emailq.cli import cli
from emailq.errors import ConfigurationError
from emailq.logs import RedactSecrets
from emailq.settings import Settings, env_name, markdown_table, redact_url

README = Path(__file__).parent.parent / "README.md"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "emailq.toml"
    path.write_text(text)
    return path


def test_defaults_hold_when_no_source_sets_anything() -> None:
    settings = Settings.load(environ={})
    assert settings.worker.lease_s == 30.0
    assert settings.origin("worker.lease_s") == "default"


def test_a_file_overrides_the_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'domain = "file.example"\n[worker]\nlease_s = 7\n')
    settings = Settings.load(config_file=path, environ={})
    assert (settings.domain, settings.worker.lease_s) == ("file.example", 7.0)
    assert settings.origin("worker.lease_s") == f"file {path}"


def test_the_file_may_be_named_by_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[worker]\nbatch_size = 11\n")
    settings = Settings.load(environ={"EMAILQ_CONFIG": str(path)})
    assert settings.worker.batch_size == 11


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'domain = "file.example"\n[worker]\nlease_s = 7\n')
    env = {"EMAILQ_WORKER_LEASE_S": "9", "EMAILQ_DOMAIN": "env.example"}
    settings = Settings.load(config_file=path, environ=env)
    assert (settings.domain, settings.worker.lease_s) == ("env.example", 9.0)
    assert settings.origin("worker.lease_s") == "env EMAILQ_WORKER_LEASE_S"


def test_flags_override_the_environment_and_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[worker]\nlease_s = 7\nbatch_size = 5\n")
    env = {"EMAILQ_WORKER_LEASE_S": "9"}
    flags = {"worker": {"lease_s": 3.5, "concurrency": None}}  # None: the flag was not given
    settings = Settings.load(config_file=path, environ=env, flags=flags)
    assert settings.worker.lease_s == 3.5
    assert settings.origin("worker.lease_s") == "flag"
    assert settings.worker.batch_size == 5  # the file still counts for what no flag set
    assert settings.origin("worker.concurrency") == "default"


def test_the_cli_applies_the_same_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, "[worker]\nlease_s = 7\nbatch_size = 5\nconcurrency = 4\n")
    monkeypatch.setenv("EMAILQ_WORKER_BATCH_SIZE", "6")
    monkeypatch.setenv("EMAILQ_WORKER_LEASE_S", "8")
    result = CliRunner().invoke(cli, ["--config", str(path), "config", "--json",
                                      "--broker-url", f"sqlite:///{tmp_path}/q.db"])  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["worker.concurrency"] == {"value": "4", "source": f"file {path}"}
    assert shown["worker.batch_size"] == {"value": "6", "source": "env EMAILQ_WORKER_BATCH_SIZE"}
    assert shown["broker.url"]["source"] == "flag"


def test_bad_settings_name_the_setting_and_its_source_not_the_value() -> None:
    with pytest.raises(ConfigurationError) as error:
        Settings.load(environ={"EMAILQ_WORKER_LEASE_S": "soon", "EMAILQ_WORKER_LEASS": "1"})
    text = str(error.value)
    assert "worker.lease_s (env EMAILQ_WORKER_LEASE_S)" in text
    assert "worker.leass" in text  # a misspelt setting is an error, not silently ignored


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Settings.load(config_file=tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        Settings.load(config_file=write_config(tmp_path, "[worker\n"), environ={})


def test_resend_key_comes_from_its_usual_variable_too() -> None:
    settings = Settings.load(environ={"RESEND_API_KEY": "re_abc123"})
    assert settings.provider.resend_api_key is not None
    assert settings.provider.resend_api_key.get_secret_value() == "re_abc123"
    assert settings.origin("provider.resend_api_key") == "env RESEND_API_KEY"


SECRETS = {
    "EMAILQ_PROVIDER_URL": "smtp://alice:pw-in-url-42@relay.example:587",
    "EMAILQ_BROKER_URL": "redis://:redis-pw-77@127.0.0.1:1/0",
    "RESEND_API_KEY": "re_resend-key-99",
    "EMAILQ_API_KEY": "eq_api-key-55",
}


def test_emailq_config_never_shows_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "400")  # no folding: a secret split over lines would hide
    for args in (["config"], ["config", "--json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        for secret in ("pw-in-url-42", "redis-pw-77", "re_resend-key-99", "eq_api-key-55"):
            assert secret not in result.output
        assert "smtp://alice:***@relay.example:587" in result.output


def test_the_log_filter_redacts_every_secret_in_messages_and_tracebacks() -> None:
    settings = Settings.load(environ=SECRETS)
    record_filter = RedactSecrets(settings.secrets())
    try:
        raise ConnectionError(f"cannot reach {SECRETS['EMAILQ_PROVIDER_URL']}")
    except ConnectionError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "url %s key %s",
                                   (SECRETS["EMAILQ_BROKER_URL"], "re_resend-key-99"),
                                   exc_info=__import__("sys").exc_info())  # fmt: skip
    assert record_filter.filter(record)
    line = logging.Formatter().format(record)
    for secret in ("pw-in-url-42", "redis-pw-77", "re_resend-key-99"):
        assert secret not in line
    assert "ConnectionError" in line and "***" in line


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert redact_url("smtp://u:p@h:25/x?pool=2") == "smtp://u:***@h:25/x?pool=2"
    assert redact_url("redis://:p@h/0") == "redis://:***@h/0"
    assert redact_url("sqlite:///q.db") == "sqlite:///q.db"


def test_the_readme_lists_every_setting_as_the_code_does() -> None:
    table = markdown_table()
    assert table in README.read_text(), "README's settings table differs: paste markdown_table()"
    for line in table.splitlines()[2:]:
        dotted = line.split("`")[1]
        assert f"`{env_name(dotted)}`" in line


def test_a_handoff_gives_a_worker_process_the_same_settings_secrets_included(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, '[monitor]\nslack_url = "https://hooks.example/s3cret"\n')
    env = {"EMAILQ_API_KEY": "eq-key-secret", "EMAILQ_WORKER_LEASE_S": "9"}
    flags = {"provider": {"url": "smtp://u:pw@relay.example:25,resend://"},
             "api": {"from_domains": {"acme": ["a.example", "b.example"]}}}  # fmt: skip
    settings = Settings.load(config_file=path, environ=env, flags=flags)
    received = Settings.from_handoff(settings.handoff())
    assert received == settings
    assert received.api.key is not None and received.api.key.get_secret_value() == "eq-key-secret"
    assert received.monitor.slack_url is not None
    assert received.monitor.slack_url.get_secret_value() == "https://hooks.example/s3cret"
    assert received.api.from_domains == {"acme": frozenset({"a.example", "b.example"})}
    assert received.origin("worker.lease_s") == "env EMAILQ_WORKER_LEASE_S"
    assert received.origin("monitor.slack_url") == f"file {path}"
