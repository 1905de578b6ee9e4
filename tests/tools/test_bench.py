"""tools/bench.py and tools/bare_unicorn.py on tiny sizes: every side runs and gives sane ratios.

No timing is asserted anywhere: these machines are shared and noisy, and the goals themselves
are the benchmark's business. What is checked is that each measurement runs the work it claims
(the same guest output on every side, the right number of exits), that the ratios are formed the
right way round, and that the verdict logic and the openssl parser are right.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
HELLO = REPO / "guests" / "hello.img"


def _load_bench():
    """tools/ is not a package: load bench.py by path (it puts tools/ on sys.path itself)."""
    spec = importlib.util.spec_from_file_location("bench", TOOLS / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
bare = bench.bare_unicorn

TINY = bench.Plan(guest_rounds=1, memstress_rounds=1, crypto_rounds=2, exit_rounds=2, exits=40,
                  bulk_bytes=64 << 10, window=0.0, linux_sev_rounds=1)


def _sane(value: float) -> bool:
    return math.isfinite(value) and value > 0


# -- pure helpers --------------------------------------------------------------------------------

OPENSSL_MR = """+DT:AES-128-ECB:1:16384
+R:560957:AES-128-ECB:0.990000
+H:16384
+F:25:AES-128-ECB:9283555038.38
"""

OPENSSL_MR_ALL_SIZES = """+H:16:64:256:1024:8192:16384
+F:22:sha256:1.0:2.0:3.0:4.0:5.0:1541980160.00
"""


def test_openssl_parser_takes_the_16k_column():
    assert bench.parse_openssl_mr(OPENSSL_MR) == pytest.approx(9283555038.38)
    assert bench.parse_openssl_mr(OPENSSL_MR_ALL_SIZES) == pytest.approx(1541980160.0)
    assert bench.parse_openssl_mr(OPENSSL_MR_ALL_SIZES, block=64) == 2.0


def test_openssl_parser_refuses_output_without_the_figure():
    with pytest.raises(bench.BenchError):
        bench.parse_openssl_mr("+H:16\n+F:22:sha256:5.0\n")
    with pytest.raises(bench.BenchError):
        bench.parse_openssl_mr("Doing aes-128-ecb for 1s\n")


def test_launch_bound_is_the_serial_combination():
    assert bench.launch_bound(2.0, 2.0) == pytest.approx(1.0)
    assert bench.launch_bound(9.0, 1.5) < 1.5


def test_goal_direction_and_spread():
    up, down = bench.GOALS["compute"], bench.GOALS["exit"]
    o = bench.summarize(up, [1.0, 2.0, 3.0], [1.0, 2.0, 2.0], {})
    assert o.ratios == [1.0, 1.0, 1.5] and o.median == 1.0 and o.met
    assert not o.goal_in_spread
    o = bench.summarize(down, [3.0, 1.0, 5.0], [1.0, 1.0, 1.0], {})
    assert o.median == 3.0 and not o.met and o.goal_in_spread
    assert bench.summarize(down, [1.0], [1.0], {}).met
    with pytest.raises(bench.BenchError):
        bench.summarize(up, [1.0], [], {})


def test_interleave_rotates_the_order():
    calls = []
    sides = {k: (lambda k=k: calls.append(k) or float(len(calls))) for k in "abc"}
    out = bench.interleave(sides, 3)
    assert calls == list("abc" "bca" "cab")
    assert {k: len(v) for k, v in out.items()} == {"a": 3, "b": 3, "c": 3}


def test_table_and_json_say_the_verdict():
    outcomes = [bench.summarize(bench.GOALS["engine"], [0.1], [1.0], {"engine": "1 MB/s"}),
                bench.summarize(bench.GOALS["exit"], [1.0], [1.0], {})]
    table = bench.format_table(outcomes, "header")
    assert "NOT met" in table and ">= 0.25" in table and "<= 2" in table
    assert "engine 1 MB/s" in table
    j = outcomes[0].to_json()
    assert j["met"] is False and j["median"] == pytest.approx(0.1) and j["goal"] == ">= 0.25"


def test_unknown_benchmark_is_a_usage_error():
    with pytest.raises(SystemExit):
        bench.main(["--only", "nonsense"])


# -- the bare Unicorn baseline -------------------------------------------------------------------

def test_bare_unicorn_runs_a_guest_flat():
    guest = bare.BareGuest(HELLO.read_bytes())
    assert _sane(guest.run())
    assert guest.exit_code == 0
    assert guest.serial.decode().startswith("Hello")


def test_exit_loop_image_exits_as_often_as_asked():
    image, outs = bare.exit_loop_image(25)
    flat = bare.BareGuest(image)
    flat.run()
    assert flat.serial == b"x" * 25 and flat.exit_code == 0
    stop = bare.StopResumeGuest(image, outs)
    stop.run()
    assert stop.finished and stop.exits == 26 and len(stop.stamps) == 26
    with pytest.raises(ValueError):
        bare.exit_loop_image(0)


# -- the measured sides, tiny -------------------------------------------------------------------

def test_hv_and_bare_run_the_same_guest():
    plain, serial = bench.guest_run_seconds(HELLO.read_bytes(), "plain")
    flat, flat_serial = bench.bare_run_seconds(HELLO.read_bytes())
    assert serial == flat_serial and serial.startswith("Hello")
    assert _sane(flat / plain)


def test_compute_and_memstress_benches_on_a_tiny_guest():
    """The full wiring of goals 1-3 with hello in place of the long guests (one SEV launch each)."""
    compute = bench.bench_compute(TINY, image_path=HELLO, expect="Hello")
    assert [o.goal.key for o in compute] == ["compute", "unicorn"]
    assert all(len(o.ratios) == 1 and _sane(o.median) for o in compute)
    assert set(compute[0].context) == {"plain", "sev", "bare"}
    memstress = bench.bench_memstress(TINY, image_path=HELLO, expect="Hello")
    assert memstress[0].goal.key == "memstress" and _sane(memstress[0].median)


def test_a_guest_that_prints_something_else_is_refused():
    with pytest.raises(bench.BenchError):
        bench.guest_run_seconds(HELLO.read_bytes(), "plain", check=lambda s: s.startswith("compute"))


def test_engine_bench_every_mode():
    for mode in bench.TweakMode:
        e = bench.EngineBench(mode, 64 << 10)
        assert _sane(e())
        assert not (e.dst == e.src).all()


def test_crypto_bench_with_fixed_openssl_figures(monkeypatch):
    """Goals 4 and 6 on 64 KiB; openssl replaced by fixed figures so no time is spent in it."""
    figures = {"aes-128-ecb": 8e9, "sha256": 2e9}
    monkeypatch.setattr(bench, "openssl_throughput", lambda algo, seconds=1: figures[algo])
    engine, launch = bench.bench_crypto(TINY)
    assert engine.goal.key == "engine" and launch.goal.key == "launch"
    assert len(engine.ratios) == 2 and all(_sane(r) for r in engine.ratios + launch.ratios)
    assert "xex-linear / openssl" in engine.context and "aes+sha256 bound" in launch.context
    assert launch.context["aes+sha256 bound"] == "1600 MB/s"


def test_launch_bench_measures_whole_pages():
    with pytest.raises(ValueError):
        bench.LaunchBench(1000)


def test_exit_bench_forms_hv_over_bare():
    [o] = bench.bench_exit(TINY)
    assert o.goal.key == "exit" and len(o.ratios) == 2
    assert all(_sane(r) for r in o.ratios)
    assert set(o.context) == {"hv per exit", "bare per exit"}


@pytest.mark.skipif(bench.shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_speed_gives_a_figure():
    assert _sane(bench.openssl_throughput("sha256", seconds=1))


# -- the Linux boot row, with stand-ins for hv and QEMU (no kernel boots here) -------------------

def _linux_dir(tmp_path: Path) -> Path:
    d = tmp_path / "linux"
    d.mkdir()
    for name in ("vmlinuz", "initrd.cpio.gz"):
        (d / name).write_bytes(b"")
    return d


def _stand_in(tmp_path: Path, name: str, body: str) -> str:
    """An executable that ignores its arguments and runs `body` (Python)."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport json, sys\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _hv_printing(tmp_path: Path, serial: str, status: int = 0, **by_mode: str):
    """An `hv_command`: hv_boot_command's arguments, run by a stand-in that prints `serial` in
    JSON, or by_mode[mode] in that mode (the keyword sev_es= for sev-es)."""
    exes = {}
    for mode in bench.LINUX_FEATURES:
        text = by_mode.get(mode.replace("-", "_"), serial)
        body = f"print(json.dumps({{'serial': {text!r}}})); sys.exit({status})"
        exes[mode] = _stand_in(tmp_path, f"hv-{mode}", body)
    return lambda kernel, initrd, mode="plain": [exes[mode],
                                                 *bench.hv_boot_command(kernel, initrd, mode)[1:]]


UP = "Run /init as init process\r\nhv-init: user space is up\r\nhv-init: powering off\r\n"
SEV_UP = "Memory Encryption Features active: AMD SEV\r\n" + UP
SEV_ES_UP = "Memory Encryption Features active: AMD SEV SEV-ES\r\n" + UP
SNP_UP = "Memory Encryption Features active: AMD SEV SEV-ES SEV-SNP\r\n" + UP


def test_linux_commands_share_the_kernel_initrd_and_command_line(tmp_path):
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    hv = bench.hv_boot_command(kernel, initrd)
    qemu = bench.qemu_boot_command("qemu", kernel, initrd)
    assert hv[hv.index("--append") + 1] == "hv.init=poweroff" and "--json" in hv and "-q" in hv
    assert qemu[qemu.index("-append") + 1] == f"{bench.PLATFORM_CMDLINE} hv.init=poweroff"
    assert qemu[qemu.index("-accel") + 1] == "tcg" and "-no-reboot" in qemu
    for cmd in (hv, qemu):
        assert str(kernel) in cmd and str(initrd) in cmd


def test_linux_row_without_the_kernel_is_skipped_saying_how_to_fetch(tmp_path):
    [o] = bench.bench_linux(TINY, linux_dir=tmp_path)
    assert o.ratios == [] and "python tools/linux.py fetch" in o.note and not o.met
    assert o.to_json()["median"] is None and o.note in bench.format_table([o])


def test_linux_row_forms_hv_over_qemu_and_checks_the_aim(tmp_path):
    qemu = _stand_in(tmp_path, "qemu", f"sys.stdout.write({UP!r})")
    [o] = bench.bench_linux(TINY, linux_dir=_linux_dir(tmp_path), qemu=qemu,
                            hv_command=_hv_printing(tmp_path, UP))
    assert o.goal.key == "linux" and len(o.ratios) == TINY.linux_rounds and _sane(o.median)
    assert set(o.context) == {"hv", "qemu"}
    assert o.goal.text == "<= 4 (aim 2)" and o.aim_met == o.goal.met(o.median, 2.0)
    goal = bench.GOALS["linux"]
    assert "met, aim not met" in bench.format_table([bench.summarize(goal, [3.0], [1.0], {})])
    assert "NOT met" in bench.format_table([bench.summarize(goal, [5.0], [1.0], {})])


def test_linux_row_without_qemu_times_hv_alone(tmp_path):
    [o] = bench.bench_linux(TINY, linux_dir=_linux_dir(tmp_path), qemu="no-such-qemu-here",
                            hv_command=_hv_printing(tmp_path, UP))
    assert o.ratios == [] and len(o.samples["hv"]) == TINY.linux_rounds
    assert "not installed" in o.note and "--install-qemu" in o.note
    assert "linux: hv " in bench.format_table([o])


@pytest.mark.parametrize("serial, status", [("Kernel panic - not syncing\r\n", 0), (UP, 4)])
def test_a_boot_that_misses_init_or_fails_is_an_error_not_a_time(tmp_path, serial, status):
    qemu = _stand_in(tmp_path, "qemu", f"sys.stdout.write({UP!r})")
    with pytest.raises(bench.BenchError):
        bench.bench_linux(TINY, linux_dir=_linux_dir(tmp_path), qemu=qemu,
                          hv_command=_hv_printing(tmp_path, serial, status))
    bad_qemu = _stand_in(tmp_path, "qemu-bad", "print('hv-init: powering off')")
    with pytest.raises(bench.BenchError):
        bench.boot_seconds([bad_qemu], "QEMU")


# -- the Linux boot under SEV and SEV-ES against plain, with stand-ins for hv -------------------

def test_encrypted_boot_commands_add_the_modes_flag_to_the_plain_one(tmp_path):
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    plain = bench.hv_boot_command(kernel, initrd)
    assert plain == bench.hv_boot_command(kernel, initrd, "plain")
    assert not {"--sev", "--sev-es"} & set(plain)
    for mode in ("sev", "sev-es"):
        assert bench.hv_boot_command(kernel, initrd, mode) == [*plain, f"--{mode}"]


def test_the_kernels_features_line_is_read_whole():
    assert bench.encryption_features(UP) is None
    assert bench.encryption_features(SEV_UP) == "AMD SEV"
    assert bench.encryption_features(SEV_ES_UP) == "AMD SEV SEV-ES"


def test_linux_sev_rows_without_the_kernel_are_skipped_saying_how_to_fetch(tmp_path):
    rows = bench.bench_linux_sev(TINY, linux_dir=tmp_path)
    assert [o.goal.key for o in rows] == ["linux-sev", "linux-sev-es", "linux-sev-snp"]
    for o in rows:
        assert o.ratios == [] and "python tools/linux.py fetch" in o.note and not o.met
    assert "skipped" in bench.format_table(rows)


def test_linux_sev_rows_form_each_mode_over_the_same_plain_boots(tmp_path):
    plan = bench.dataclasses.replace(TINY, linux_sev_rounds=2)
    sev, es, snp = bench.bench_linux_sev(plan, linux_dir=_linux_dir(tmp_path),
                                         hv_command=_hv_printing(tmp_path, UP, sev=SEV_UP,
                                                                 sev_es=SEV_ES_UP, sev_snp=SNP_UP))
    assert (sev.goal.key, es.goal.key, snp.goal.key) == ("linux-sev", "linux-sev-es", "linux-sev-snp")
    times = sev.samples
    assert {k: len(v) for k, v in times.items()} == {"plain": 2, "sev": 2, "sev-es": 2, "sev-snp": 2}
    assert sev.ratios == [s / p for s, p in zip(times["sev"], times["plain"])]
    assert es.ratios == [s / p for s, p in zip(times["sev-es"], times["plain"])]
    assert snp.ratios == [s / p for s, p in zip(times["sev-snp"], times["plain"])]
    assert set(sev.context) == {"plain", "sev"} and set(es.context) == {"plain", "sev-es"}
    assert sev.goal.text == "<= 1.25 (aim 1.1)" and es.goal.text == "<= 2" == snp.goal.text
    table = bench.format_table([sev, es, snp])
    assert table.count("\n8 ") == 1 and table.count("\n9 ") == 1 and table.count("\n10 ") == 1
    rows = bench.json.loads(bench.json.dumps([sev.to_json(), es.to_json(), snp.to_json()]))
    assert [r["key"] for r in rows] == ["linux-sev", "linux-sev-es", "linux-sev-snp"]
    assert rows[1]["samples"].keys() == {"plain", "sev", "sev-es", "sev-snp"}


def test_linux_sev_verdicts_against_bound_and_aim():
    sev, es = bench.GOALS["linux-sev"], bench.GOALS["linux-sev-es"]
    assert "met, aim met" in bench.format_table([bench.summarize(sev, [1.05], [1.0], {})])
    assert "met, aim not met" in bench.format_table([bench.summarize(sev, [1.2], [1.0], {})])
    assert "NOT met" in bench.format_table([bench.summarize(sev, [1.3], [1.0], {})])
    assert bench.summarize(es, [1.9], [1.0], {}).met
    assert not bench.summarize(es, [2.1], [1.0], {}).met


@pytest.mark.parametrize("sev, sev_es, sev_snp", [
    (UP, SEV_ES_UP, SNP_UP),          # the SEV boot's kernel found no encryption: it ran plain
    (SEV_UP, SEV_UP, SNP_UP),         # the SEV-ES boot's kernel found SEV alone
    (SEV_UP, "Kernel panic - not syncing\r\n", SNP_UP),
    (SEV_UP, SEV_ES_UP, SEV_ES_UP),   # the SEV-SNP boot's kernel found no SNP
])
def test_an_encrypted_boot_that_is_not_what_it_claims_is_an_error(tmp_path, sev, sev_es, sev_snp):
    with pytest.raises(bench.BenchError):
        bench.bench_linux_sev(TINY, linux_dir=_linux_dir(tmp_path),
                              hv_command=_hv_printing(tmp_path, UP, sev=sev, sev_es=sev_es,
                                                      sev_snp=sev_snp))


def test_a_plain_boot_whose_kernel_reports_encryption_is_an_error(tmp_path):
    qemu = _stand_in(tmp_path, "qemu", f"sys.stdout.write({UP!r})")
    with pytest.raises(bench.BenchError, match="AMD SEV"):
        bench.bench_linux(TINY, linux_dir=_linux_dir(tmp_path), qemu=qemu,
                          hv_command=_hv_printing(tmp_path, SEV_UP))
