"""The proxy's replies: its own, named, and enhanced status codes (RFC 3463) on every reply
it sends. Pure: no I/O.

aiosmtpd answers many conditions itself, in words of its own and without an enhanced status
code ("500 Error: bad syntax", "502 EXPN not implemented"). ``ProxySMTP.push`` passes every
reply through :func:`with_enhanced_code`: a stock reply we know is replaced by our own
wording with the right code, a stock reply that echoes the client (an unknown command, a
VRFY argument) by one that does not, and anything else still lacking a code gets the
class's ``X.0.0`` ("other undefined status"), so a future aiosmtpd reply cannot slip out
without one.

RFC 2034 section 3 (4) asks for the code on "the text part of all 2xx, 4xx, and 5xx SMTP
responses other than the initial greeting and any response to HELO or EHLO"; those, and the
3xx intermediate replies (354 to DATA, 334 AUTH challenges), which it does not cover, are
left as they are. The replies to HELP are 2xx and 5xx, so they carry one too.

Every failure on our side before the upstream answered is a 4xx (the client keeps the mail
and retries), never a 5xx: only what retrying cannot mend is refused for good.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Our own replies, code first.
S250_OK = "250 2.0.0 OK"
S250_MAIL_OK = "250 2.1.0 OK"
S221_BYE = "221 2.0.0 Bye"
S421_STOPPING = "421 4.3.2 the proxy is shutting down; try again shortly"
S451_INTERNAL = "451 4.3.0 internal error; the mail was not relayed, try again later"
S451_STORE = "451 4.3.0 cannot record the mail right now; it was not relayed, try again later"
S451_NO_TRANSACTION = "451 4.4.2 the upstream transaction was lost; start again with MAIL"
S451_REPLAY = "451 4.4.2 the upstream answered differently on the second pass; try again later"
S501_SENDER = "501 5.1.7 bad sender address syntax (control characters)"
S501_RECIPIENT = "501 5.1.3 bad recipient address syntax (control characters)"
S501_SENDER_SYNTAX = "501 5.1.7 bad sender address syntax: use MAIL FROM:<address>"
S501_RECIPIENT_SYNTAX = "501 5.1.3 bad recipient address syntax: use RCPT TO:<address>"
S553_NEEDS_UTF8 = "553 5.6.7 a non-ASCII address needs the SMTPUTF8 parameter"
# Bytes that are not UTF-8 in a path can never be relayed (SMTPUTF8 paths are UTF-8, RFC
# 6531 3.3): a permanent refusal, not the 451 of an encoding error further on.
S553_SENDER_UTF8 = "553 5.1.7 bad sender address: not valid UTF-8"
S553_RECIPIENT_UTF8 = "553 5.1.3 bad recipient address: not valid UTF-8"
# NUL has no place in mail data: RFC 5322 2.3/3.5 leave it out of message text, and RFC
# 2045 2.7/2.8 out of 7bit and 8bit data alike (only BINARYMIME, RFC 3030, allows it, and
# we offer neither it nor CHUNKING). A next server that drops NUL before looking for the
# end of data would read "<CR><LF><NUL>.<CR><LF>" as one (SMTP smuggling), so such mail is
# refused, not passed on or altered. 554 is RFC 5321's "transaction failed" after DATA;
# 5.6.0 is RFC 3463's "other or undefined media error" (the content, not the envelope).
S554_NUL = "554 5.6.0 mail data contains NUL bytes; the mail was not relayed"
S554_NOT_ALLOWED = "554 5.7.1 relaying denied: client address not allowed (authenticate first)"
# aiosmtpd's own words for a mail too big or with a line too long; the DATA reader says
# them too, and STOCK_REPLIES below turns them into ours.
STOCK_TOO_BIG = "552 Error: Too much mail data"
STOCK_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"


class ProxyError(Exception):
    """The root of the proxy's errors: each ends a command or a mail, and its ``reply`` is
    the complete reply the client is told: the first argument, unless a subclass words it
    (``MetadataError``)."""

    @property
    def reply(self) -> str:
        return str(self.args[0])


# aiosmtpd's fixed replies, and ours instead (the same reply code unless a better one is
# named in the comment).
STOCK_REPLIES = {
    "552 Error: Too much mail data": "552 5.3.4 message too big for this proxy",
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 message size exceeds the fixed maximum"
    ),
    "503 Error: need MAIL command": "503 5.5.1 need MAIL command first",
    "503 Error: need RCPT command": "503 5.5.1 need RCPT command first",
    "503 Error: nested MAIL command": "503 5.5.1 nested MAIL command",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 line too long (RFC 5321 4.5.3.1.6)",
    "503 Error: send HELO first": "503 5.5.1 send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 send EHLO first",
    "501 Syntax: MAIL FROM: <address>": "501 5.5.4 syntax: MAIL FROM:<address>",
    "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]": (
        "501 5.5.4 syntax: MAIL FROM:<address> [SP <mail-parameters>]"
    ),
    "501 Syntax: RCPT TO: <address>": "501 5.5.4 syntax: RCPT TO:<address>",
    "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]": (
        "501 5.5.4 syntax: RCPT TO:<address> [SP <mail-parameters>]"
    ),
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": (
        "501 5.5.4 BODY can only be one of 7BIT, 8BITMIME"
    ),
    "501 Error: SMTPUTF8 takes no arguments": "501 5.5.4 SMTPUTF8 takes no arguments",
    "501 Error: SMTPUTF8 disabled": "501 5.5.4 SMTPUTF8 is not offered",
    "555 MAIL FROM parameters not recognized or not implemented": (
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
    ),
    "555 RCPT TO parameters not recognized or not implemented": (
        "555 5.5.4 RCPT TO parameters not recognized or not implemented"
    ),
    # The command line itself: too long, empty, or a command name that is not ASCII.
    "500 Command line too long": "500 5.5.2 command line too long",
    "500 Error: bad syntax": "500 5.5.2 syntax error: no command, or a command name not in ASCII",
    "500 Error: strict ASCII mode": "500 5.6.7 non-ASCII text needs the SMTPUTF8 parameter",
    "502 EXPN not implemented": "502 5.5.1 EXPN not implemented",
    "250 OK": "250 2.0.0 OK",
    "221 Bye": "221 2.0.0 Bye",
    "252 Cannot VRFY user, but will accept message and attempt delivery": (
        "252 2.5.0 cannot VRFY user, but will accept mail for it and attempt delivery"
    ),
    "501 Syntax: VRFY <address>": "501 5.5.4 syntax: VRFY <address>",
    "501 Syntax: HELO hostname": "501 5.5.4 syntax: HELO hostname",
    "501 Syntax: EHLO hostname": "501 5.5.4 syntax: EHLO hostname",
    "501 Syntax: QUIT": "501 5.5.4 syntax: QUIT (no argument)",
    "501 Syntax: RSET": "501 5.5.4 syntax: RSET (no argument)",
    "501 Syntax: DATA": "501 5.5.4 syntax: DATA (no argument)",
    "501 Syntax: STARTTLS": "501 5.5.4 syntax: STARTTLS (no argument)",
    # Said only when no certificate is configured: STARTTLS is not offered, and trying
    # again cannot help, so a permanent "not implemented" rather than aiosmtpd's 454.
    "454 TLS not available": "502 5.5.1 STARTTLS is not offered here",
    "220 Ready to start TLS": "220 2.0.0 ready to start TLS",
    "554 Command refused due to lack of security": (
        "554 5.7.0 command refused: the TLS handshake failed"
    ),
    "530 Must issue a STARTTLS command first": "530 5.7.0 must issue a STARTTLS command first",
    "500 Error: command 'AUTH' not recognized": "503 5.5.1 AUTH is offered after EHLO only",
    "503 Already authenticated": "503 5.5.1 already authenticated",
    "501 Not enough value": "501 5.5.4 syntax: AUTH mechanism [initial-response]",
    "501 Too many values": "501 5.5.4 syntax: AUTH mechanism [initial-response]",
}

_COMMAND_NAME = re.compile(r"[A-Z][A-Z0-9-]{0,19}")


def _unknown_command(match: re.Match[str]) -> str:
    # The command name is the client's: named back only when it is a plain word, so no
    # control character or line end of it can reach the client's reply stream.
    name = match.group(1)
    shown = f" {name}" if _COMMAND_NAME.fullmatch(name) else ""
    return f"500 5.5.2 command{shown} not recognized"


# aiosmtpd's replies with a variable part: the pattern, and our reply from its match.
_DYNAMIC: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r'500 Error: command "(.*)" not recognized', re.S), _unknown_command),
    # VRFY with an argument aiosmtpd cannot parse: the argument is not echoed back.
    (re.compile(r"502 Could not VRFY .*", re.S), lambda m: "501 5.1.3 VRFY: bad address syntax"),
    # HELP and HELP COMMAND (RFC 5321 4.2.2: 214 is the help reply).
    (re.compile(r"250 Supported commands: (.*)"), lambda m: f"214 2.0.0 commands: {m[1]}"),
    (re.compile(r"250 Syntax: (.*)"), lambda m: f"214 2.0.0 syntax: {m[1]}"),
    (
        re.compile(r"501 Supported commands: (.*)"),
        lambda m: f"504 5.5.4 no help for that command; commands: {m[1]}",
    ),
    # aiosmtpd's own fallback when even our handle_exception failed: an internal error is
    # a 451 (the client retries), never a permanent 500.
    (
        re.compile(r"500 Error: (\(.*|Cannot describe error)", re.S),
        lambda m: "451 4.3.0 internal error; try again later",
    ),
]

_REPLY_LINE = re.compile(r"([245])([0-9]{2})([ -]?)(.*)", re.S)
# Control characters: refused in a path, dropped from an upstream reply passed on, so no
# line end or terminal escape of either reaches the other side.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# An enhanced status code at the start of a reply's text.
ENHANCED_CODE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}(?= |$)")


def with_enhanced_code(reply: str) -> str:
    """``reply`` (one or more CRLF-separated lines) with an enhanced status code on each
    2xx, 4xx and 5xx line; see the module doc. Not for the greeting or HELO/EHLO replies."""
    known = STOCK_REPLIES.get(reply)
    if known is not None:
        return known
    for pattern, make in _DYNAMIC:
        match = pattern.fullmatch(reply)
        if match is not None:
            return make(match)
    lines = reply.split("\r\n")
    # A multi-line reply whose first line has a code gives it to the lines that lack one.
    first = _REPLY_LINE.fullmatch(lines[0])
    found = ENHANCED_CODE.match(first[4]) if first else None
    return "\r\n".join(_line_with_code(line, found[0] if found else None) for line in lines)


def _line_with_code(line: str, code: str | None) -> str:
    parts = _REPLY_LINE.fullmatch(line)
    if parts is None:
        return line  # 1xx/3xx, or not a reply line at all: left as it is
    klass, rest, sep, text = parts.groups()
    if ENHANCED_CODE.match(text):
        return line
    if code is None or code[0] != klass:
        code = f"{klass}.0.0"
    return f"{klass}{rest}{sep or ' '}{code} {text}".rstrip()
