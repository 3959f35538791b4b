#!/usr/bin/env python3
"""Summarize a kosoku/Autobahn fuzzingclient report (index.json).

Usage: summarize.py [REPORT_DIR | index.json]   (default: target/autobahn)

A case counts as failed, as in Autobahn's own report, when its behavior is
FAILED (or ERROR: kosoku could not run it, e.g. connection refused) or its
behaviorClose is FAILED or UNCLEAN. NON-STRICT, INFORMATIONAL, UNIMPLEMENTED
and the close verdicts WRONG CODE / FAILED BY CLIENT are not failures.
Exits 1 on any failure (or an empty report), 2 if the report is unreadable.
"""
import json
import sys
from collections import Counter
from pathlib import Path

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]
FAILING = {"FAILED", "ERROR"}
FAILING_CLOSE = {"FAILED", "UNCLEAN"}


def case_key(case_id):
    return [int(p) for p in case_id.split(".")]


def detail(report_dir, entry):
    try:
        return json.loads((report_dir / entry["reportfile"]).read_text())
    except (KeyError, OSError, ValueError):
        return {}


def main():
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "target/autobahn")
    if path.is_dir():
        path = path / "index.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"summarize: cannot read {path}: {e}", file=sys.stderr)
        return 2

    # {agent: {case id: entry}}; kosoku files cases it could not connect for
    # under "host:port" instead of the server's agent string, so merge agents.
    cases = {cid: e for agent in index.values() for cid, e in agent.items()}
    counts = Counter(e["behavior"] for e in cases.values())
    close_counts = Counter(e["behaviorClose"] for e in cases.values())
    print("agents:", ", ".join(sorted(index)) or "-")
    print("behavior:", ", ".join(f"{b} {counts[b]}" for b in BEHAVIORS + sorted(set(counts) - set(BEHAVIORS))))
    print("behaviorClose:", ", ".join(f"{b} {n}" for b, n in sorted(close_counts.items())))

    failed = 0
    for cid in sorted(cases, key=case_key):
        e = cases[cid]
        if e["behavior"] == "OK" and e["behaviorClose"] == "OK":
            continue
        is_fail = e["behavior"] in FAILING or e["behaviorClose"] in FAILING_CLOSE
        failed += is_fail
        d = detail(path.parent, e)
        reason = "; ".join(dict.fromkeys(x for x in (d.get("result"), d.get("resultClose")) if x))
        code = e.get("remoteCloseCode")
        print(f"{'FAIL' if is_fail else '    '} {cid:<8} {e['behavior']} / {e['behaviorClose']}"
              f"{f' (close {code})' if code is not None else ''}: {reason or '-'}")
        if is_fail and d.get("description"):
            print(f"       {' '.join(d['description'].split())[:160]}")

    nine = [e.get("duration") or 0 for cid, e in cases.items() if cid.startswith("9.")]
    if nine:
        print(f"9.* duration: {sum(nine)} ms over {len(nine)} cases")
    if not cases:
        print("summarize: report has no cases", file=sys.stderr)
    print(f"autobahn: {len(cases) - failed} passed, {failed} failed")
    return 1 if failed or not cases else 0


if __name__ == "__main__":
    sys.exit(main())
