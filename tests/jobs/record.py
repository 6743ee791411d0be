"""A test job: records where it ran, on which devices and when, while it runs.

    record.py OUT_DIR SECONDS [EXIT_CODE]

Writes OUT_DIR/<job>.<pid>.json with start, a heartbeat every 50 ms ("last") and "end"
once done; a run killed midway has no "end" and its "last" tells when it stopped.
"""

import json
import os
import sys
import time
from pathlib import Path

out, seconds = Path(sys.argv[1]), float(sys.argv[2])
exit_code = int(sys.argv[3]) if len(sys.argv) > 3 else 0
record = {
    "job": os.environ["ICX_JOB_ID"],
    "center": os.environ["ICX_CENTER_ID"],
    "pool": os.environ["ICX_POOL_ID"],
    "devices": [int(d) for d in os.environ["ICX_DEVICES"].split(",")],
    "cuda": os.environ["CUDA_VISIBLE_DEVICES"],
    "pid": os.getpid(),
    "start": time.time(),
}
path = out / f"{record['job']}.{record['pid']}.json"


def save() -> None:
    record["last"] = time.time()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


save()
print(f"job {record['job']} on {record['center']} devices {record['cuda']}", flush=True)
deadline = record["start"] + seconds
while time.time() < deadline:
    time.sleep(min(0.05, max(0.0, deadline - time.time())))
    save()
record["end"] = time.time()
save()
sys.exit(exit_code)
