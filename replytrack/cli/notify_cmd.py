"""``replytrack notify``: deliver queued events to the webhooks (standalone sender)."""

from __future__ import annotations

import signal
import time
from types import FrameType

import click

from replytrack.cli.common import State, cli, pass_state, setup_logging
from replytrack.config import ConfigError, check_notify, load_secret_files
from replytrack.notify import Sender


@cli.command("notify")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
@click.option(
    "--retry-base",
    type=click.FloatRange(min=0.01),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait after the first failed attempt; doubles per attempt.",
)
@click.option(
    "--retry-cap",
    type=click.FloatRange(min=0.01),
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait between attempts.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.01),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="How often to look for new events.",
)
@click.option(
    "--retry-dead",
    is_flag=True,
    help="First give events that ran out of attempts a fresh set, due now.",
)
@pass_state
def notify_command(
    state: State, once: bool, retry_base: float, retry_cap: float, poll: float, retry_dead: bool
) -> None:
    """POST recorded events (replies, stops, bounces...) to the configured webhooks.

    Each event is signed (X-ReplyTrack-Signature: sha256=HMAC of "<timestamp>.<body>" with
    notify.secret; without one the sender refuses to start unless notify.allow_unsigned is
    true) and retried with backoff until every URL answered 2xx or
    notify.max_attempts is reached. Several senders may share one store (the milter and the
    proxy run one in-process too): rows are leased, never posted twice at once.

    \b
    Example:
      REPLYTRACK_NOTIFY_WEBHOOKS=https://crm.example.com/hooks/replytrack replytrack notify
      replytrack notify --once
      replytrack notify --once --retry-dead
    """
    config = state.config()
    if not config.notify_webhooks:
        raise click.ClickException(
            "no webhooks configured: set notify.webhooks in the config file"
            " or REPLYTRACK_NOTIFY_WEBHOOKS"
        )
    try:
        # Before the store is opened: a setting that can never work is one line, not a
        # sender that fails (or posts unsigned) on every event.
        check_notify(config)
        config = load_secret_files(config)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    setup_logging(config.log_level)
    store = state.store()
    if retry_dead:
        revived = store.retry_dead_outbox(time.time())
        click.echo(f"retrying {revived} dead event(s)")
    sender = Sender(config, store, retry_base=retry_base, retry_cap=retry_cap, poll_interval=poll)
    if once:
        tried = sender.deliver_due(limit=1_000_000)
        counts = store.outbox_counts()
        click.echo(f"tried {tried}; pending {counts['pending']}, dead {counts['dead']}")
        return

    def _terminate(signum: int, frame: FrameType | None) -> None:
        # Runs in the thread that runs the sender, between any two of its bytecodes: stop()
        # takes no lock (see replytrack.wakeup), it sets a flag and ends the sender's sleep.
        sender.stop()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    sender.run()
    # Stopped: a further SIGTERM or SIGINT (a second Ctrl-C) has nothing left to stop. Left
    # to Python, which puts back the default action as it exits, one would turn this clean
    # stop into a death by signal. Blocked, not ignored: setting SIG_IGN for the second
    # signal raises when one of the first came meanwhile ("ignored due to race condition").
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
