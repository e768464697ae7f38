#!/usr/bin/python3
"""Verify every DKIM-Signature of a message with dkimpy (python3-dkim), a
DKIM implementation independent of go-msgauth, which mailbus signs with.

Usage: dkimpy_verify.py RECORDS.json < message

RECORDS.json maps DNS names ("sel._domainkey.example.com") to TXT record
values; they are served through dkimpy's dnsfunc hook, so no DNS is used.
Prints a JSON list with one object per signature, topmost first:
{"d": domain, "s": selector, "a": algorithm, "ok": bool, "error": str}.
Exit status 3 means dkimpy is not installed.
"""
import json
import sys

try:
    import dkim
    from dkim.util import parse_tag_value
except ImportError as e:
    sys.stderr.write("dkimpy is missing (%s): apt-get install python3-dkim\n" % e)
    sys.exit(3)


def main():
    with open(sys.argv[1]) as f:
        records = json.load(f)

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        value = records.get(name.rstrip(".").lower())
        return value.encode("ascii") if value is not None else None

    msg = sys.stdin.buffer.read()
    d = dkim.DKIM(msg)
    sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    results = []
    for i, value in enumerate(sigs):
        tags = parse_tag_value(value)
        res = {
            "d": tags.get(b"d", b"").decode(),
            "s": tags.get(b"s", b"").decode(),
            "a": tags.get(b"a", b"").decode(),
            "h": tags.get(b"h", b"").decode(),
            "ok": False,
            "error": "",
        }
        try:
            res["ok"] = bool(dkim.DKIM(msg).verify(idx=i, dnsfunc=dnsfunc))
        except Exception as e:  # report every failure, do not stop at one
            res["error"] = "%s: %s" % (type(e).__name__, e)
        results.append(res)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
