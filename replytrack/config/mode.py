"""The ``mode`` setting: ``enforce`` (the default) or ``monitor``, for a safe first week.

In monitor mode replytrack does everything but stop: the milter classifies, matches and
records each verdict (the event marked ``detail.monitor``) but changes no enrollment, adds
no ``X-ReplyTrack`` header and queues no webhook; the proxy stamps and records every mail
and relays it also to recipients enforce mode would hold back, noting on their recipient
row why it would have. ``replytrack campaigns`` then shows what would have been stopped,
and after the switch to enforce ``replytrack monitor apply`` makes the stops it recorded.

The do-not-contact list is honoured in both modes: its entries are people's own requests
(an unsubscribe link, ``replytrack suppress``), not replytrack's judgement of a mail.

One setting for the whole site, not one per daemon: the rollout is one decision, and a
milter that stops while its proxy sends anyway (or the other way round) would show a state
that neither mode explains. It changes with a reload (SIGHUP): "then enforce" needs no
restart.
"""

from __future__ import annotations

from replytrack.config.errors import ConfigError

ENFORCE = "enforce"
MONITOR = "monitor"
MODES = (ENFORCE, MONITOR)
# The reason recorded on a recipient row the proxy relayed in monitor mode, before the
# reason enforce mode would have had to suppress it: "monitor: stopped: replied".
MONITOR_REASON = "monitor: "


def check_mode(mode: str) -> None:
    """Refuse a mode that is neither, naming the setting."""
    if mode not in MODES:
        raise ConfigError(f"mode: {mode!r} is not one of {', '.join(MODES)}")


def describe(mode: str) -> str:
    """One line for the log and ``doctor``: what the mode does."""
    if mode == MONITOR:
        return (
            "monitor mode: nothing is stopped (replies are recorded, not flagged; the proxy"
            " relays to stopped recipients, noting why it would not; the do-not-contact"
            " list still holds)"
        )
    return "enforce mode: replies stop campaigns, the proxy suppresses stopped recipients"
