"""`hv run --owner-exec CMD` against an owner command that hangs, lingers, fails, floods or answers
nonsense: hv ends within --timeout, leaves no process behind, counts an answer only with exit
status 0 and turns every failure into one line and status 3."""

import json
import os
import shlex
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from hv.cli import main
from hv.vmm import owner_exec
from hv.vmm.owner_exec import MAX_ANSWER, OwnerExecError, run_owner

GUESTS = Path(__file__).resolve().parents[2] / "guests"
HELLO = GUESTS / "hello.img"
SECRET = b"released by an owner with habits"
PY = shlex.quote(sys.executable)


@pytest.fixture
def hv(psp_state):
    runner = CliRunner(env={"HV_PSP_STATE": psp_state})

    def invoke(*args):
        t0 = time.monotonic()
        r = runner.invoke(main, ["run", *map(str, args)])
        r.elapsed = time.monotonic() - t0
        return r
    return invoke


def launch_failure(r) -> str:
    """The one stderr line of a failed launch: status 3, "hv: launch failed: ...", no traceback."""
    assert r.exit_code == 3, (r.exit_code, r.output, r.exception)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hv: launch failed: "), r.stderr
    return lines[0]


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie does not: only its exit status is left, for whoever
    reaps orphans here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_soon(pid: int) -> bool:
    """SIGKILL is delivered asynchronously: give a killed process a moment to die."""
    for _ in range(100):
        if not running(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def real_owner(psp_state, tmp_path):
    """`python -m hv.owner.exec` for guests/secret.img under --sev, and the --session it needs."""
    runner = CliRunner(env={"HV_PSP_STATE": psp_state})
    certs, sess = tmp_path / "certs", tmp_path / "session"
    assert runner.invoke(main, ["psp", "export", "-o", str(certs)]).exit_code == 0
    r = runner.invoke(main, ["owner", "session", str(certs / "pdh.cert"), "--policy", "0x1",
                             "-o", str(sess)])
    assert r.exit_code == 0, r.output
    (tmp_path / "secret.bin").write_bytes(SECRET)
    command = " ".join(shlex.quote(str(a)) for a in (
        sys.executable, "-m", "hv.owner.exec", "--tk", sess / "tmp_tk.bin",
        "--image", GUESTS / "secret.img", "--secret", tmp_path / "secret.bin"))
    return sess, command


# ---- time: --timeout bounds the owner ------------------------------------------------------------


def test_a_hanging_owner_ends_within_the_timeout(hv):
    """Scenario: the owner never answers; `--timeout 2` ends hv in about 2 s, not 120."""
    r = hv(HELLO, "--sev", "--timeout", "2", "--owner-exec", "sleep 40")
    line = launch_failure(r)
    assert "did not answer within" in line and "--timeout" in line, line
    assert r.elapsed < 8, r.elapsed


def test_under_snp_each_release_request_shares_the_runs_timeout(psp_state, tmp_path):
    """Scenario: an SEV-SNP guest asks a hanging owner for its secret: the owner is stopped when
    the run's --timeout is spent, and the request is answered "no secret" (status 2)."""
    runner = CliRunner(env={"HV_PSP_STATE": psp_state})
    t0 = time.monotonic()
    r = runner.invoke(main, ["run", str(GUESTS / "secret.img"), "--sev-snp", "--timeout", "3",
                             "--owner-exec", "sleep 40", "-q", "--json"])
    elapsed = time.monotonic() - t0
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert elapsed < 10, elapsed
    assert r.exit_code in (3, 124), r.output  # the guest gives up (3) or the watchdog stops it
    release = json.loads(r.stdout)["launch"]["secret_release"]
    outcome = release["outcomes"][0]
    assert outcome["result"] == "no secret" and "did not answer within" in outcome["reason"], outcome
    assert not release["released"]


def test_without_a_timeout_the_documented_default_applies(monkeypatch):
    monkeypatch.setattr(owner_exec, "DEFAULT_TIMEOUT", 0.5)
    t0 = time.monotonic()
    with pytest.raises(OwnerExecError, match=r"within 0\.5 s \(the default without --timeout\)"):
        run_owner("sleep 40", {}, ("header", "data"))
    assert time.monotonic() - t0 < 5


def test_nothing_left_of_the_timeout_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(OwnerExecError, match="nothing is left of --timeout"):
        run_owner(f"touch {shlex.quote(str(marker))}", {}, ("header", "data"), timeout=0)
    assert not marker.exists()


# ---- processes: the owner's whole group goes, on every path ----------------------------------------


@pytest.mark.parametrize("ending, words", [
    ("sleep 40", "did not answer within"),             # timeout
    ("echo garbage", "no JSON answer"),                # bad answer
    ("echo '{\"refuse\": \"not this guest\"}'", "refused the launch: not this guest"),  # an answer
])
def test_no_child_of_the_owner_survives(hv, tmp_path, ending, words):
    """Scenario: the owner starts a background child (its stdout elsewhere, so it holds nothing
    up) and then times out, answers garbage or answers: the child is killed every time."""
    pidfile = tmp_path / "child.pid"
    command = f"sleep 60 >/dev/null 2>&1 & echo $! > {shlex.quote(str(pidfile))}; {ending}"
    line = launch_failure(hv(HELLO, "--sev", "--timeout", "3", "--owner-exec", command))
    assert words in line, line
    pid = int(pidfile.read_text())
    assert gone_soon(pid), f"the owner's child {pid} outlived hv run"


def test_a_lingering_child_holding_stdout_does_not_hold_the_answer(hv):
    """Scenario: the owner answers and exits, but a child it left keeps stdout open: hv takes the
    answer when the owner exits, not when the child would close stdout (40 s later)."""
    r = hv(HELLO, "--sev", "--timeout", "10", "--owner-exec",
           "sleep 40 & echo '{\"refuse\": \"answered before the child ended\"}'")
    line = launch_failure(r)
    assert "refused the launch: answered before the child ended" in line, line
    assert r.elapsed < 8, r.elapsed


def test_a_real_secret_arrives_though_the_owner_leaves_a_child(hv, real_owner, tmp_path):
    """Scenario: hv.owner.exec releases the secret and the shell around it left a child holding
    stdout: the guest gets its secret, hv returns at once, and the child is gone."""
    sess, owner = real_owner
    pidfile = tmp_path / "child.pid"
    command = f"sleep 40 & echo $! > {shlex.quote(str(pidfile))}; {owner}"
    r = hv(GUESTS / "secret.img", "--sev", "--session", sess, "--timeout", "20", "--owner-exec", command)
    assert r.exit_code == 0, r.output
    assert "secret-sha256: " in r.stdout
    assert r.elapsed < 15, r.elapsed
    assert gone_soon(int(pidfile.read_text()))


# ---- the answer counts only with status 0 ----------------------------------------------------------


def test_an_answer_with_a_nonzero_exit_does_not_count(hv, real_owner):
    """Scenario: a real secret packet on stdout, then exit 1: the owner failed, nothing is
    injected; the honest control (same packet, exit 0) releases it."""
    sess, owner = real_owner
    r = hv(GUESTS / "secret.img", "--sev", "--session", sess, "--owner-exec", f"{owner}; exit 1")
    line = launch_failure(r)
    assert "exited with status 1" in line and "does not count" in line, line
    assert "secret-sha256" not in r.output
    r = hv(GUESTS / "secret.img", "--sev", "--session", sess, "--owner-exec", f"{owner}; exit 0")
    assert r.exit_code == 0 and "secret-sha256: " in r.stdout, r.output


def test_a_refusal_stands_whatever_the_status():
    """hv.owner.exec refuses with status 1: a refusal releases nothing, so it is honoured."""
    answer = run_owner("echo '{\"refuse\": \"wrong measurement\"}'; exit 1", {}, ("header", "data"))
    assert answer == {"refuse": "wrong measurement"}


def test_a_failed_owner_names_its_status_and_stderr(hv):
    line = launch_failure(hv(HELLO, "--sev", "--owner-exec", "echo 'key file missing' >&2; exit 7"))
    assert "exited with status 7" in line and "key file missing" in line, line
    line = launch_failure(hv(HELLO, "--sev", "--owner-exec", "kill -9 $$"))
    assert "killed by SIGKILL" in line, line


# ---- what the owner writes ------------------------------------------------------------------------


def test_garbage_is_named_as_garbage_with_a_safe_excerpt(hv):
    """Scenario: the owner writes non-JSON with a terminal escape and more lines: the message
    says it is not JSON, quotes its start with the escape neutralised, and stays one line."""
    r = hv(HELLO, "--sev", "--owner-exec", r"printf '\033]0;pwned\007not json\nline two\n'; echo " + "x" * 500)
    line = launch_failure(r)
    assert "no JSON answer" in line and "no output" not in line, line
    assert "\x1b" not in r.stderr and "\\x1b]0;pwned\\x07not json\\n" in line, line
    assert len(line) < 200, line


def test_nothing_on_stdout_is_named_as_such(hv):
    line = launch_failure(hv(HELLO, "--sev", "--owner-exec", "true"))
    assert "gave no answer on stdout" in line, line


def test_output_above_the_bound_is_refused(hv):
    """Scenario: 20 MB on stdout: refused as larger than MAX_ANSWER (1 MiB)."""
    line = launch_failure(hv(HELLO, "--sev", "--owner-exec", "head -c 20000000 /dev/zero"))
    assert f"more than {MAX_ANSWER} bytes" in line, line


def test_a_process_that_left_the_group_cannot_hold_hv(tmp_path):
    """Scenario: the owner answers but first starts a writer in a session of its own (beyond the
    group kill) that floods stderr: hv still returns the answer at once."""
    pidfile = tmp_path / "escaped.pid"
    script = ("import os, subprocess, sys; p = subprocess.Popen(['yes'], stdout=sys.stderr, "
              f"start_new_session=True); open({str(pidfile)!r}, 'w').write(str(p.pid)); "
              "print('{\"refuse\": \"escaped\"}')")
    t0 = time.monotonic()
    try:
        answer = run_owner(f"{PY} -c {shlex.quote(script)}", {}, ("header", "data"), timeout=20)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)
    assert answer == {"refuse": "escaped"}
    assert time.monotonic() - t0 < 10


def test_endless_output_is_refused_without_being_held():
    """Scenario: an owner that writes for ever: refused at once, and hv never holds much more than
    the bound (tracemalloc counts what Python allocates on the way)."""
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(OwnerExecError, match="more than"):
            run_owner("yes", {}, ("header", "data"), timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 10
    assert peak < 4 * MAX_ANSWER, peak


@pytest.mark.parametrize("value, kind", [
    (5, "a number"), ([], "a list"), (None, "null"), ({}, "an object"), (True, "a boolean"),
])
@pytest.mark.parametrize("field", ["header", "data"])
def test_wrong_json_types_are_one_line(hv, field, value, kind):
    """Scenario: a number, list, null... as header or data: one line naming the field, status 3
    (it was a TypeError traceback and status 1)."""
    answer = {"header": "00" * 52, "data": "00" * 16, field: value}
    line = launch_failure(hv(HELLO, "--sev", "--owner-exec", f"echo {shlex.quote(json.dumps(answer))}"))
    assert f'"{field}" must be a hex string, not {kind}' in line, line


@pytest.mark.parametrize("stdout, words", [
    ("[" * 100000, "no JSON answer"),                   # too deep for the decoder
    ("1" * 10000, "no JSON answer"),                    # an integer past Python's digit limit
    ("[1, 2]", "answer must be"),                       # JSON, not an object
    ('{"header": "00"}', "answer must be"),             # a field missing
    ('{"refuse": 3}', '"refuse" must be a string, not a number'),
    ("\xff\xfe{}", "no JSON answer"),                   # not UTF-8
], ids=["deep", "long-int", "list", "missing", "refuse-type", "not-utf8"])
def test_odd_answers_are_one_clear_error(tmp_path, stdout, words):
    out = tmp_path / "answer"
    out.write_bytes(stdout.encode("latin-1"))
    with pytest.raises(OwnerExecError, match=words) as e:
        run_owner(f"cat {shlex.quote(str(out))}", {}, ("header", "data"))
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_a_refusal_reason_is_printable_and_short(tmp_path):
    reason = "line one\nline two \x1b[2J" + "z" * 1000
    (tmp_path / "answer").write_text(json.dumps({"refuse": reason}))
    answer = run_owner(f"cat {shlex.quote(str(tmp_path / 'answer'))}", {}, ("header", "data"))
    assert "\n" not in answer["refuse"] and "\x1b" not in answer["refuse"]
    assert answer["refuse"].startswith("line one\\nline two \\x1b[2J") and len(answer["refuse"]) < 250


def test_the_request_arrives_on_stdin():
    """The honest control: the owner reads the request and answers from it."""
    script = "import json, sys; r = json.load(sys.stdin); print(json.dumps({'header': r['h'], 'data': 'ab'}))"
    assert run_owner(f"{PY} -c {shlex.quote(script)}", {"h": "cd" * 5000}, ("header", "data")) == \
        {"header": "cd" * 5000, "data": "ab"}
