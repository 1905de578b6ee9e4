"""The state file as shared, hostile storage: two PSPs on one file never lose each other's
acknowledged changes, a failed write changes nothing and says why without a traceback, a FIFO
or an oversized file is refused instead of read, and a save killed half-way leaves no private
keys behind once the file is next used."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from firmware import Firmware, NvStoreError
from firmware._nvstore import MAX_STATE_BYTES, NvStore
from fw_flows import OUT_SPA, export_pdh, init_platform
from fw_support import Mailbox, MemPort
from sevwire import Cmd, PekCertImport, PekCsr, SevCert, Status, Usage, sign_sev_cert


def _boot(nv_path) -> Mailbox:
    port = MemPort()
    mb = Mailbox(Firmware(port, nv_path), port)
    init_platform(mb)
    return mb


def _signed_pek(mb: Mailbox) -> tuple[bytes, bytes]:
    """(PEK signed by a new OCA, OCA): what an external owner hands back for PEK_CERT_IMPORT."""
    mb.call(Cmd.PEK_CSR, PekCsr(OUT_SPA, 2084))
    csr = mb.port.read(OUT_SPA, 2084)
    key = ec.generate_private_key(ec.SECP384R1())
    oca = sign_sev_cert(SevCert.from_public_key(key.public_key(), Usage.OCA), key, Usage.OCA)
    pek = sign_sev_cert(SevCert.decode(csr), key, Usage.OCA, slot=1)
    return pek.encode(), oca.encode()


def _import(mb: Mailbox, pek: bytes, oca: bytes) -> int:
    mb.port.write(OUT_SPA, pek)
    mb.port.write(OUT_SPA + 0x1000, oca)
    return mb.status(Cmd.PEK_CERT_IMPORT, PekCertImport(OUT_SPA, 2084, OUT_SPA + 0x1000, 2084))


def _leftovers(nv_path: Path) -> list[str]:
    keep = {nv_path.name, nv_path.name + ".lock"}
    return sorted(p.name for p in nv_path.parent.iterdir() if p.name not in keep)


def test_a_change_builds_on_the_state_another_psp_saved(fw, nv_path):
    """B booted before A's PEK_GEN; B's later PDH_GEN must keep A's new PEK, not write back the
    PEK B loaded (a lost PLATFORM_RESET/PEK_GEN, acknowledged and silently undone)."""
    a, b = _boot(nv_path), _boot(nv_path)
    old_pek = export_pdh(b)[1][:2084]
    assert a.status(Cmd.PEK_GEN) == Status.SUCCESS
    new_pek = export_pdh(a)[1][:2084]
    assert new_pek != old_pek
    assert b.status(Cmd.PDH_GEN) == Status.SUCCESS
    pdh_b = export_pdh(b)[0]
    after = _boot(nv_path)
    assert export_pdh(after)[1][:2084] == new_pek
    assert export_pdh(after)[0] == pdh_b


def test_ownership_taken_by_one_psp_is_not_taken_again_by_another(fw, nv_path):
    """B still believes the platform is self-owned; its import must be ALREADY_OWNED, not a
    silent replacement of the owner A's import installed."""
    a, b = _boot(nv_path), _boot(nv_path)
    pek_a, oca_a = _signed_pek(a)
    pek_b, oca_b = _signed_pek(b)
    assert _import(a, pek_a, oca_a) == Status.SUCCESS
    assert _import(b, pek_b, oca_b) == Status.ALREADY_OWNED
    chain = export_pdh(_boot(nv_path))[1]
    assert chain[2084:2 * 2084] == oca_a


def test_a_change_waits_for_the_lock(mb, nv_path):
    """While another process holds the state file's lock, PDH_GEN waits instead of racing it."""
    init_platform(mb)
    done = threading.Event()
    statuses = []
    with open(nv_path.with_name(nv_path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: (statuses.append(mb.status(Cmd.PDH_GEN)), done.set()))
        worker.start()
        time.sleep(0.5)
        waited = not done.is_set()
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(30)
    assert waited, "PDH_GEN did not wait for the lock"
    assert statuses == [Status.SUCCESS]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_changes_nothing_and_says_why(mb, fw, nv_path, monkeypatch, caplog):
    init_platform(mb)
    before, file_before = export_pdh(mb), nv_path.read_bytes()
    monkeypatch.setattr("firmware._nvstore.os.write", _enospc)
    with caplog.at_level(logging.DEBUG, logger="firmware"):
        assert mb.status(Cmd.PDH_GEN) == Status.HWERROR_PLATFORM
    assert fw.nv_fault == ("PDH_GEN did not take effect: cannot write PSP state file "
                           f"{nv_path}: No space left on device; the old state is intact")
    assert not [r for r in caplog.records if r.exc_info]  # no traceback in the firmware's log
    assert export_pdh(mb) == before and nv_path.read_bytes() == file_before
    assert _leftovers(nv_path) == []
    monkeypatch.undo()
    assert mb.status(Cmd.PDH_GEN) == Status.SUCCESS and fw.nv_fault is None


def test_read_only_directory_changes_nothing(mb, fw, nv_path, monkeypatch):
    """Root ignores permission bits, so a read-only filesystem is what is simulated: every
    file the store would create fails with EROFS."""
    init_platform(mb)
    before, file_before = export_pdh(mb), nv_path.read_bytes()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("firmware._nvstore.os.open", read_only)
    assert mb.status(Cmd.PEK_GEN) == Status.HWERROR_PLATFORM
    assert "Read-only file system; the old state is intact" in fw.nv_fault
    assert export_pdh(mb) == before and nv_path.read_bytes() == file_before
    assert Firmware(MemPort(), nv_path) is not None  # a read-only state still boots


def test_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    outcome = []

    def boot():
        try:
            Firmware(MemPort(), fifo)
        except NvStoreError as e:
            outcome.append(str(e))

    worker = threading.Thread(target=boot, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # blocked opening the FIFO: give it a writer and an end so it returns
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("opening a FIFO as the state file blocked")
    assert outcome == [f"PSP state file {fifo} is not a regular file"]


def test_oversized_state_file_is_not_read(tmp_path):
    big = tmp_path / "state.json"
    with open(big, "wb") as f:
        f.truncate(MAX_STATE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(NvStoreError, match="is larger than"):
        Firmware(MemPort(), big)


_KILLED_SAVE = """
import os, sys, time
from firmware._nvstore import NvStore
store = NvStore(sys.argv[1])
body = store.load_record()
def stall(fd):
    print("saving", flush=True)
    time.sleep(120)
os.fsync = stall
store.save_record(body)
"""


def test_a_save_killed_midway_leaves_no_keys_once_the_file_is_used_again(fw, nv_path):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(nv_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    stale = [nv_path.parent / name for name in _leftovers(nv_path)]
    assert stale and b"PRIVATE KEY" in stale[0].read_bytes()  # the window the kill hit
    assert NvStore(nv_path).load_record() is not None  # the next user of the file
    assert _leftovers(nv_path) == []
    Firmware(MemPort(), nv_path)
