"""The mail every system in benchmarks/e2e.py delivers, and how the peers build it.

Standard library only: the arq peer runs in its own environment, without emailq.

An invitation is about 1.5 KB of text + HTML for one recipient; recipients are distinct and
spread over a few domains. Every system gets the same fields (``invitation(i)``) and sends
one message per recipient. The peers build each message the way their users usually do:
``EmailMessage`` with ``set_content`` / ``add_alternative`` (the default policy).
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid

SENDER = "Anna & Ben <hello@annaandben.example>"
DOMAINS = ("example.com", "example.org", "example.net", "guests.example", "mail.example")
MESSAGE_ID_DOMAIN = "bench.example"  # make_msgid() would otherwise look up the host's FQDN

TEXT = """Dear {name},

With joy in our hearts, we invite you to celebrate our wedding.

    Saturday 14 June 2025, ceremony at 16:00
    Château de Lourmarin, Avenue Raoul Dautry, 84160 Lourmarin, France

The ceremony will be held in the castle gardens, followed by dinner and
dancing in the orangery. Shuttles leave the Hôtel du Parc at 15:15 and
return from 23:00 onwards.

Please let us know whether you can join us by 1 May, and tell us about
any dietary needs: {rsvp}

Dress code: garden formal. The lawn is soft, so block heels are a good
idea.

With love,
Anna & Ben
"""

HTML = """<!doctype html>
<html><body style="font-family: Georgia, serif; color: #333;">
<h1 style="font-weight: normal;">Anna &amp; Ben are getting married</h1>
<p>Dear {name},</p>
<p>With joy in our hearts, we invite you to celebrate our wedding on
<strong>Saturday 14 June 2025</strong>, ceremony at 16:00, at the
<strong>Château de Lourmarin</strong>, Avenue Raoul Dautry, 84160 Lourmarin, France.</p>
<p>The ceremony will be held in the castle gardens, followed by dinner and dancing in the
orangery. Shuttles leave the Hôtel du Parc at 15:15.</p>
<p><a href="{rsvp}" style="color: #a0522d;">Please reply by 1 May</a></p>
<p>With love,<br>Anna &amp; Ben</p>
</body></html>
"""

URGENT_TEXT = """Dear {name},

Because of the storm forecast for this afternoon, the ceremony moves
indoors to the orangery and starts at 16:30 instead of 16:00. Shuttles
leave the hotel at 15:45.

See you there,
Anna & Ben
"""


def invitation(i: int) -> dict[str, str]:
    """The i-th bulk email: a wedding invitation to guest number i."""
    name = f"Guest {i}"
    rsvp = f"https://annaandben.example/rsvp/{i:08d}"
    return {
        "from": SENDER,
        "to": f"{name} <guest{i}@{DOMAINS[i % len(DOMAINS)]}>",
        "subject": "You are invited: Anna & Ben, 14 June 2025",
        "text": TEXT.format(name=name, rsvp=rsvp),
        "html": HTML.format(name=name, rsvp=rsvp),
    }


def ceremony_change(i: int) -> dict[str, str]:
    """The i-th critical email: the ceremony moved, a few hours before it."""
    name = f"Guest {i}"
    return {
        "from": SENDER,
        "to": f"{name} <urgent{i}@{DOMAINS[i % len(DOMAINS)]}>",
        "subject": "Ceremony moved indoors, now at 16:30",
        "text": URGENT_TEXT.format(name=name),
    }


def critical_fields(i: int, tag: str) -> dict[str, str]:
    """The i-th critical email for a peer, with the Message-ID the sink will report for it
    (``<{tag}-{i}@bench.example>``): emailq's ids come from its broker instead."""
    return ceremony_change(i) | {"message_id": f"{tag}-{i}"}


def build_message(fields: dict[str, str]) -> EmailMessage:
    """The email as a typical Python application builds it (default policy)."""
    message = EmailMessage()
    message["From"] = fields["from"]
    message["To"] = fields["to"]
    message["Subject"] = fields["subject"]
    message["Date"] = formatdate(usegmt=True)
    if "message_id" in fields:  # a critical email the benchmark times at the sink
        message["Message-ID"] = f"<{fields['message_id']}@{MESSAGE_ID_DOMAIN}>"
    else:
        message["Message-ID"] = make_msgid(domain=MESSAGE_ID_DOMAIN)
    message.set_content(fields["text"])
    if "html" in fields:
        message.add_alternative(fields["html"], subtype="html")
    return message
