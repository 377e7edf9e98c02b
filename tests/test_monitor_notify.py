"""Alert notices reach a Slack-shaped receiver, a signed webhook and an SMTP server; a dead
receiver is retried and logged while the monitor goes on evaluating."""

from __future__ import annotations

import logging
import time

import pytest

from emailq.clock import ManualClock
from emailq.monitor.alerts import Notice
from emailq.monitor.notify import Dispatcher, EmailChannel, SlackChannel, WebhookChannel
from emailq.monitor.rules import Rule
from emailq.monitor.runner import Monitor
from emailq.sink import SmtpSink, free_port
from monitoring import Receiver, monitored

NOTICE = Notice(rule="critical_p99", status="firing", severity="critical",
                summary="critical p99 over 1 s", metric="p99_s", lanes=("critical",),
                value=2.5, threshold=1.0, op=">", at=1e9, since=1e9 - 60,
                labels=(("team", "ops"),))  # fmt: skip


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_slack_webhook_and_email_each_get_the_notice() -> None:
    secret = b"s3cret"
    with Receiver() as slack, Receiver(secret) as hook, SmtpSink(keep_data=True) as smtp:
        dispatcher = Dispatcher([
            SlackChannel(slack.url), WebhookChannel(hook.url, secret.decode()),
            EmailChannel(f"smtp://127.0.0.1:{smtp.port}", "monitor@ops.example",
                         "oncall@ops.example"),
        ])  # fmt: skip
        dispatcher.send(NOTICE)
        wait_for(lambda: slack.bodies and hook.bodies and smtp.count)
        dispatcher.close()
    [message] = slack.bodies
    assert message["blocks"][0]["type"] == "header"
    assert "FIRING" in message["text"] and "critical_p99" in message["text"]
    [body] = hook.bodies
    assert body["rule"] == "critical_p99" and body["labels"] == {"team": "ops"}
    assert hook.refused == 0
    [mail] = smtp.deliveries
    assert mail.recipients == ("oncall@ops.example",)


def test_a_webhook_with_the_wrong_secret_is_refused_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Receiver(b"right") as hook:
        dispatcher = Dispatcher([WebhookChannel(hook.url, "wrong")], attempts=3, backoff_s=0.01)
        dispatcher.send(NOTICE)
        wait_for(lambda: hook.refused == 3)
        dispatcher.close()
    assert hook.bodies == []
    assert "HTTP 401" in caplog.text and "giving up" in caplog.text


def test_an_unreachable_webhook_is_retried_and_logged_while_the_monitor_evaluates(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "emailq.monitor.notify")
    clock = ManualClock()
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    always = Rule("always", "queue_depth", ">=", 0, summary="fires at once")
    with monitored(f"sqlite:///{tmp_path}/q.db", clock, interval_s=1) as deployment:
        monitor = Monitor(deployment, channels=[WebhookChannel(dead, "x")], rules=(always,),
                          notify_backoff_s=0.2)  # fmt: skip
        try:
            started = time.monotonic()
            written = 0
            while "retrying" not in caplog.text or written < 5:
                written += monitor.tick() is not None
                clock.advance(1)
                assert time.monotonic() - started < 10
        finally:
            monitor.close(notify_timeout_s=0.1)
    assert monitor.notices_sent == 1  # fired once; its delivery is the courier's business
    assert "alert notice always/firing to webhook failed (attempt 1 of 6" in caplog.text
    assert written >= 5  # evaluations went on while the notice was being retried
