"""Anchors: the lineage chain heads, signed and kept outside the tables.

The hash chains catch an edited, removed or reordered row, and the heads each commit records catch a cut-off
end, but someone who rewrites both the rows and the Delta log can recompute them all. After every lineage
commit the sink appends the heads it wrote to an anchor log (a JSON line per commit, never rewritten), each
line signed with HMAC-SHA256 under a key from the settings and chained to the line before it. ``check`` then
holds the table to every anchored (chain, seq, hash): a rewritten table no longer has the anchored hashes,
and a forged, edited or removed anchor line breaks the signatures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

GENESIS_MAC = "0" * 64


class Anchors:
    """An append-only log of signed chain heads at ``path``, keyed by ``key``."""

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("an anchor key needs at least 16 bytes")
        self.path = path
        self._key = key
        self._last: str | None = None  # the last line's MAC, once read

    def _mac(self, body: dict[str, Any]) -> str:
        return hmac.new(self._key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
                        hashlib.sha256).hexdigest()

    def append(self, heads: dict[str, Any]) -> None:
        """Sign ``heads`` (chain id → [seq, row hash]) after the last line and append it (fsynced)."""
        if self._last is None:
            lines = self.read()
            self._last = lines[-1]["mac"] if lines else GENESIS_MAC
        body = {"ts_ms": int(time.time() * 1000), "heads": heads, "prev": self._last}
        mac = self._mac(body)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps({**body, "mac": mac}, separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._last = mac

    def read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def check(self, rows: list[dict[str, Any]]) -> str | None:
        """Hold ``rows`` (the lineage table) to every anchor; what is wrong, or None.

        Raises nothing on a bad log: a line that does not parse or verify is the answer.
        """
        from schemas.tables import chain_id

        try:
            lines = self.read()
        except ValueError as e:
            return f"the anchor log {self.path} does not parse: {e}"
        hashes = {(chain_id(r), int(r["seq"])): r["row_hash"] for r in rows}
        previous = GENESIS_MAC
        for number, line in enumerate(lines, 1):
            body = {k: line.get(k) for k in ("ts_ms", "heads", "prev")}
            if not hmac.compare_digest(str(line.get("mac")), self._mac(body)):
                return f"anchor {number} is not signed with the anchor key (forged or edited)"
            if line["prev"] != previous:
                return f"anchor {number} does not follow anchor {number - 1} (anchors removed or reordered)"
            previous = line["mac"]
            for cid, (seq, digest) in sorted(line["heads"].items()):
                found = hashes.get((cid, int(seq)))
                if found != digest:
                    state = "is missing" if found is None else f"has hash {found[:12]}…, not {digest[:12]}…"
                    return f"anchor {number}: chain {cid} seq {seq} {state} (the table was rewritten)"
        return None
