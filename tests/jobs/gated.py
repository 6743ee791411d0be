"""A test job that runs until the test lets it finish.

    gated.py OUT_DIR [EXIT_CODE]

Writes OUT_DIR/<job>.<pid>.started, prints "started", waits until OUT_DIR/go exists,
prints "finished" and exits with EXIT_CODE (default 0).
"""

import os
import sys
import time
from pathlib import Path

out = Path(sys.argv[1])
exit_code = int(sys.argv[2]) if len(sys.argv) > 2 else 0
job = os.environ["ICX_JOB_ID"]
print(f"started {job}", flush=True)
(out / f"{job}.{os.getpid()}.started").touch()
while not (out / "go").exists():
    time.sleep(0.02)
print(f"finished {job}", flush=True)
sys.exit(exit_code)
