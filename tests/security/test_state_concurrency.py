"""Racing platform owners: `hv psp rotate`, `hv psp reset` and `hv run --sev` in several processes
on one state file. No acknowledged change is lost, the file always loads, no temporary is left.

Each worker process runs its commands one after another (through the real CLI, in-process after
one import, so the race is between processes and not between Python start-ups) and, before and
after each command, takes the state file's lock itself to look at what is in force. Times come
from CLOCK_MONOTONIC, which all processes share, so "acknowledged before" is well defined:
- a snapshot's PDH was printed by a command, and never by one that ended before a command that
  was acknowledged ahead of the snapshot began (else that command's change was replaced by an
  older one);
- after a reset was acknowledged, no PEK in force before it started is ever in force again (a
  rotation that read the state before the reset and saved after it would bring it back);
- every snapshot is valid JSON with a good checksum, and no temporary exists under the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HELLO = Path(__file__).resolve().parents[2] / "guests" / "hello.img"
WORKERS = {"rotate": (3, 4), "reset": (1, 3), "run": (1, 2)}  # kind: (processes, commands each)


def _snapshot(state: Path) -> dict:
    """What is in force, read under the state file's lock (the lock hv itself takes)."""
    with open(state.with_name(state.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t = time.monotonic()
        raw = state.read_bytes()
        others = sorted(set(os.listdir(state.parent)) - {state.name, state.name + ".lock"})
    snap = {"ev": "snapshot", "t": t, "others": others, "valid": False, "pek": None, "pdh": None}
    try:
        doc = json.loads(raw)
        body = doc["body"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        snap["valid"] = doc["format"] == "hv-psp-nv" and hashlib.sha256(canonical).hexdigest() == doc["sha256"]
        snap["pek"] = hashlib.sha256(bytes.fromhex(body["owner"]["pek_cert"])).hexdigest()
        snap["pdh"] = hashlib.sha256(bytes.fromhex(body["owner"]["pdh_cert"])).hexdigest()
    except (ValueError, KeyError, TypeError):
        pass
    return snap


def _worker(kind: str, state: Path, count: int) -> None:
    from click.testing import CliRunner

    from hv.cli import main

    args = {"rotate": ["psp", "rotate", "--json"], "reset": ["psp", "reset", "--json"],
            "run": ["run", str(HELLO), "--sev", "--mem", "4M", "-q"]}[kind]
    runner = CliRunner()
    for _ in range(count):
        print(json.dumps(_snapshot(state)), flush=True)
        start = time.monotonic()
        r = runner.invoke(main, [*args, "--psp-state", str(state)])
        end = time.monotonic()
        pdh = json.loads(r.stdout)["pdh_sha256"] if kind != "run" and r.exit_code == 0 else None
        print(json.dumps({"ev": "cmd", "kind": kind, "start": start, "end": end,
                          "status": r.exit_code, "pdh": pdh, "stderr": r.stderr}), flush=True)
        print(json.dumps(_snapshot(state)), flush=True)


def test_racing_platform_commands_lose_no_acknowledged_change(psp_state, tmp_path):
    from hv.hw.machine import Machine, MachineConfig

    Machine(MachineConfig(dram_size=4 << 20, psp_state=str(psp_state))).psp_firmware  # noqa: B018
    state = tmp_path / "psp.json"
    shutil.copy(psp_state, state)
    first = _snapshot(state)

    procs = [subprocess.Popen([sys.executable, __file__, kind, str(state), str(count)],
                              stdout=subprocess.PIPE, text=True)
             for kind, (n, count) in WORKERS.items() for _ in range(n)]
    events = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        events += [json.loads(line) for line in out.splitlines()]
    events.append(_snapshot(state))

    cmds = [e for e in events if e["ev"] == "cmd"]
    snaps = [first] + [e for e in events if e["ev"] == "snapshot"]
    assert len(cmds) == sum(n * count for n, count in WORKERS.values())
    assert all(c["status"] == 0 for c in cmds), [c["stderr"] for c in cmds if c["status"]]
    assert all(s["valid"] and s["others"] == [] for s in snaps), [s for s in snaps if not s["valid"] or s["others"]]

    initial = {"kind": "initial", "start": float("-inf"), "end": float("-inf")}
    producer = {first["pdh"]: initial} | {c["pdh"]: c for c in cmds if c["pdh"]}
    changes = [c for c in cmds if c["pdh"]]
    for s in snaps:
        made = producer.get(s["pdh"])
        assert made is not None, f"PDH {s['pdh'][:16]} in force at {s['t']} was never acknowledged"
        for c in changes:
            if c["end"] < s["t"] and c is not made:
                assert made["end"] > c["start"], (f"{c['kind']} acknowledged at {c['end']} was "
                                                   f"replaced by the older {made['kind']}")

    for reset in (c for c in cmds if c["kind"] == "reset"):
        before = {s["pek"] for s in snaps if s["t"] < reset["start"]}
        came_back = [s for s in snaps if s["t"] > reset["end"] and s["pek"] in before]
        assert not came_back, f"the reset acknowledged at {reset['end']} was undone at {came_back[0]['t']}"

    from firmware._context import API_MAJOR, API_MINOR
    from firmware._identity import PlatformIdentity
    from firmware._nvstore import NvStore

    PlatformIdentity.from_record(NvStore(state).load_record(), (API_MAJOR, API_MINOR))
    assert sorted(os.listdir(tmp_path)) == [state.name, state.name + ".lock"]


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
