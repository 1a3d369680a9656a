"""Campaign mail as an engine submits it to the proxy: the steps of campaign "spring" from
a seller to a prospect, both at DOMAIN. The Postfix example and package tests send these
through a real proxy and Postfix and look for them by Subject."""

from __future__ import annotations

from email.message import EmailMessage

# The domain of the seller, the prospect and the engine's own Message-IDs.
DOMAIN = "example.test"


def campaign_mail(step: int) -> EmailMessage:
    """Step ``step`` of campaign "spring", Subject ``Offer, step N``, with the engine's own
    Message-ID (``<engine-stepN@crm.DOMAIN>``) that the proxy keeps as X-Original-Message-ID."""
    msg = EmailMessage()
    msg["From"] = f"Sales <sales@{DOMAIN}>"
    msg["To"] = f"Prospect <prospect@{DOMAIN}>"
    msg["Subject"] = f"Offer, step {step}"
    msg["Message-ID"] = f"<engine-step{step}@crm.{DOMAIN}>"
    msg["X-ReplyTrack-Campaign"] = "spring"
    msg["X-ReplyTrack-Step"] = str(step)
    msg.set_content(f"Hello, this is step {step} of our offer.\n")
    return msg
