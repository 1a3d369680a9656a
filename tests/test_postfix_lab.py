"""The private Postfix lab itself: local delivery, and fail-open when the milter is down."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable
from email.message import EmailMessage

import pytest

from tests.support.postfix import PostfixLab, free_port

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(120)]


def _send(lab: PostfixLab, subject: str, to: str = "alice@example.test") -> None:
    msg = EmailMessage()
    msg["From"] = "sender@client.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("hello from the lab test\n")
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, local_hostname="client.test", timeout=30) as s:
        s.send_message(msg)


def test_local_mode_delivers_to_maildir(postfix_lab: Callable[..., PostfixLab]) -> None:
    lab = postfix_lab()
    assert (
        "replytrack-lab"
        in socket.create_connection(("127.0.0.1", lab.smtp_port)).recv(200).decode()
    )
    _send(lab, "lab-local-1")
    [delivered] = lab.wait_for_mail(1)
    assert b"Subject: lab-local-1" in delivered
    assert b"Delivered-To: alice@example.test" in delivered
    lab.wait_queue_empty()
    assert "status=sent" in lab.log()
    assert lab.postconf("-h", "queue_directory").strip() == str(lab.spool)


def test_other_domains_are_refused(postfix_lab: Callable[..., PostfixLab]) -> None:
    lab = postfix_lab()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        _send(lab, "lab-elsewhere", to="bob@elsewhere.test")


def test_milter_down_with_accept_still_delivers(postfix_lab: Callable[..., PostfixLab]) -> None:
    # Nothing listens on this port: Postfix cannot reach the milter at all.
    lab = postfix_lab(milter=f"inet:127.0.0.1:{free_port()}", milter_default_action="accept")
    _send(lab, "lab-milter-down")
    [delivered] = lab.wait_for_mail(1)
    assert b"Subject: lab-milter-down" in delivered
    assert "milter service" in lab.log().lower()


def test_two_instances_run_side_by_side(postfix_lab: Callable[..., PostfixLab]) -> None:
    first = postfix_lab()
    second = postfix_lab(mode="discard")
    assert first.smtp_port != second.smtp_port
    _send(second, "lab-discard")
    second.wait_queue_empty()
    _send(first, "lab-first")
    assert len(first.wait_for_mail(1)) == 1
    first.stop()
    assert not first.running()
    assert second.running()
