#!/usr/bin/env python3
"""Prepares Digest credentials for a wrk run against sekisho (bench/run.sh).

Usage: digest_auth.py PROXY_URL TARGET THREADS COUNT OUT_PREFIX

Asks the proxy for one nonce per wrk thread (a request without credentials
answered 407), then writes OUT_PREFIX.N (N = 1..THREADS): the nonce on the
first line, then COUNT lines "NC RESPONSE" for nonce counts 1..COUNT, the
SHA-256 request-digest of RFC 7616 for user "bench", password "bench", realm
"bench", GET TARGET, qop=auth, cnonce "bench". bench/forward.lua sends them in
order. wrk's Lua has no hash functions, so the hashing happens here, before
the measured run.
"""

import hashlib
import re
import sys
import urllib.request


def nonce(proxy, target):
    handler = urllib.request.ProxyHandler({"http": proxy})
    opener = urllib.request.build_opener(handler)
    try:
        opener.open(target, timeout=10)
    except urllib.error.HTTPError as e:
        for value in e.headers.get_all("Proxy-Authenticate") or []:
            m = re.search(r'nonce="([^"]+)"', value)
            if value.startswith("Digest") and m:
                return m.group(1)
    sys.exit("no Digest challenge from %s" % proxy)


def main():
    proxy, target, threads, count, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    h = lambda s: hashlib.sha256(s.encode()).hexdigest()
    ha1 = h("bench:bench:bench")
    ha2 = h("GET:" + target)
    for t in range(1, threads + 1):
        n = nonce(proxy, target)
        head = "%s:%s:" % (ha1, n)
        tail = ":bench:auth:" + ha2
        with open("%s.%d" % (prefix, t), "w") as f:
            f.write(n + "\n")
            f.writelines("%08x %s\n" % (nc, h(head + "%08x" % nc + tail)) for nc in range(1, count + 1))


if __name__ == "__main__":
    main()
