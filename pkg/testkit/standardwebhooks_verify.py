#!/usr/bin/env python3
"""Verify webhooks with the `standardwebhooks` package from PyPI, the
Standard Webhooks reference implementation, independent of the Go code
that signed them.

Usage: standardwebhooks_verify.py WEBHOOKS.jsonl

Each line is {"id": ..., "timestamp": ..., "signature": ..., "body": str,
"secrets": [whsec_..., ...], "received_at": unix seconds}: the three
headers as received, the body as received, the secrets that must each
verify it on their own, and when it was received. The library checks the
timestamp against the clock (5 minutes either way); a webhook is checked
as of when it was received, so a long test can verify at its end.
Prints {"checked": N, "verified": M, "failures": [first 20 reasons]}.
Exit status 3 means the package is not installed.
"""
import json
import sys

import datetime as _dt

try:
    import standardwebhooks.webhooks as _swh
    from standardwebhooks.webhooks import Webhook
except ImportError as e:
    sys.stderr.write("standardwebhooks is missing (%s): python3 -m pip install --target ~/.cache/mailbus/python standardwebhooks\n" % e)
    sys.exit(3)



class _ReceivedClock(_dt.datetime):
    """The library's clock, set to each webhook's time of receipt."""

    at = None

    @classmethod
    def now(cls, tz=None):
        if cls.at is not None:
            return _dt.datetime.fromtimestamp(cls.at, tz=tz)
        return _dt.datetime.now(tz)


_swh.datetime = _ReceivedClock

checked = verified = 0
failures = []
hooks = {}
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        rec = json.loads(line)
        _ReceivedClock.at = rec.get("received_at")
        headers = {
            "webhook-id": rec["id"],
            "webhook-timestamp": rec["timestamp"],
            "webhook-signature": rec["signature"],
        }
        for secret in rec["secrets"]:
            checked += 1
            wh = hooks.get(secret)
            if wh is None:
                wh = hooks[secret] = Webhook(secret)
            try:
                wh.verify(rec["body"], headers)
                verified += 1
            except Exception as e:  # WebhookVerificationError and friends
                if len(failures) < 20:
                    failures.append("%s: %s" % (rec["id"], e))
json.dump({"checked": checked, "verified": verified, "failures": failures}, sys.stdout)
