# The summary of a scripts/chaos-shipped.sh run, from each scenario's verdict.json in OUT_DIR:
#   python3 scripts/lib/chaos-summary.py OUT_DIR COMMIT DIRTY SEED SCENARIO...
import json, os, sys
from datetime import datetime, timezone
out, commit, dirty, seed, *names = sys.argv[1:]
print("# Shipped chaos scenarios, run by scripts/chaos-shipped.sh on this machine (real tern up")
print("# processes, release build, 3 nodes each). Generated from each run's verdict.json.")
print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; commit {commit}"
      + ("" if dirty == "0" else f" plus {dirty} uncommitted files") + f"; seed {seed}")
for n in names:
    try:
        v = json.load(open(os.path.join(out, n, "verdict.json")))
    except OSError:
        print(f"{n}: no verdict (the run did not finish; see {n}/stdout.txt)")
        continue
    s = v["stats"]
    fmt = lambda us: "-" if us is None else f"{us / 1000:.1f} ms"
    failed = sum(s["failed"].values())
    print(f"{n}: {'passed' if not v['violations'] else 'FAILED'}; {s['operations']} operations, "
          f"{s['ok']} ok, {failed} typed errors {dict(s['failed'])}, {s['unknown']} unknown, "
          f"{s['async_accepted']} async accepted ({s['async_rerun']} rerun, {s['duplicate_runs']} duplicate runs); "
          f"p99 under faults {fmt(s['p99_us_under_faults'])}, otherwise {fmt(s['p99_us_otherwise'])}"
          + ("" if s.get("detection_ms_max") is None else
             f"; nodes seen going within {s['detection_ms_max']} ms"
             + ("" if s.get("recovery_ms_max") is None else f", back within {s['recovery_ms_max']} ms of the heal")))
    if s.get("registry"):
        print(f"  registry: {s['registry']}")
    for line in s.get("damage", []):
        print(f"  damage: {line}")
    for line in s.get("added", []):
        print(f"  added: {line}")
    if s.get("async_stranded"):
        print(f"  async stranded on a node that refused to start on its damaged store: {s['async_stranded']}")
    for x in v["violations"]:
        print(f"  violation {x['invariant']}: {x['detail']}")
