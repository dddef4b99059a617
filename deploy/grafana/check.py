"""Checks deploy/grafana/rill-dashboard.json against the metrics the code registers.

Usage: python check.py DASHBOARD.json BROKER_METRICS.rs CONTROLLER_METRICS.rs
(cargo xtask deploy-check runs it). Every rill_broker_* / rill_controller_* name a query uses
must be registered in the broker's or controller's metrics.rs (prometheus-client adds the
prefix, and _total to counters, _bucket/_sum/_count to histograms), so a renamed metric fails
here instead of leaving an empty panel. Exits 1 listing every unknown name.
"""

import json
import re
import sys

SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def registered(source, prefix):
    # registry.register("name", ...) and the controller's ("name", "help", &gauge) table.
    names = set(re.findall(r'register\(\s*"([a-z0-9_]+)"', source))
    names |= set(re.findall(r'\(\s*"([a-z0-9_]+)",\s*"[^"]*",\s*&m\.', source))
    return {f"{prefix}_{n}" for n in names}


def base(name, known):
    if name in known:
        return name
    for s in SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in known:
            return name[: -len(s)]
    return None


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    dashboard, broker_rs, controller_rs = sys.argv[1:]
    with open(dashboard) as f:
        d = json.load(f)
    known = registered(open(broker_rs).read(), "rill_broker") | registered(open(controller_rs).read(), "rill_controller")
    if len(known) < 10:
        sys.exit(f"only {len(known)} metrics found in the sources: has metrics.rs changed shape? update {__file__}")
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    unknown = sorted({n for e in exprs for n in re.findall(r"\brill_(?:broker|controller)_[a-z0-9_]+", e)
                      if base(n, known) is None})
    for n in unknown:
        print(f"{dashboard}: {n} is not a metric the broker or controller registers", file=sys.stderr)
    if unknown:
        sys.exit(1)
    print(f"grafana/check.py: {len(d['panels'])} panels, {len(exprs)} queries, every metric name registered")


if __name__ == "__main__":
    main()
