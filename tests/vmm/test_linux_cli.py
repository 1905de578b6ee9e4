"""`hv run --kernel`: every bad kernel, initrd or option combination is one line and status 2,
before any guest runs (no kernel boots in these tests)."""

from __future__ import annotations

from click.testing import CliRunner

from hv.cli import main
from tests.boot.test_bzimage import MiB, synthetic


def _run(tmp_path, kernel: bytes, *args: str, initrd: bytes | None = None):
    k = tmp_path / "bzImage"
    k.write_bytes(kernel)
    argv = ["run", "--kernel", str(k), *args]
    if initrd is not None:
        i = tmp_path / "initrd"
        i.write_bytes(initrd)
        argv += ["--initrd", str(i)]
    return CliRunner().invoke(main, argv, input=b"")


def _one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("hv:")]
    assert len(lines) == 1 and text in lines[0], result.output


def test_a_file_that_is_not_a_bzimage(tmp_path):
    _one_line_error(_run(tmp_path, b"\x7fELF" + bytes(4096)), "not a bzImage")


def test_a_truncated_kernel(tmp_path):
    _one_line_error(_run(tmp_path, bytes(synthetic())[:-1]), "truncated bzImage")


def test_a_boot_protocol_older_than_2_12(tmp_path):
    _one_line_error(_run(tmp_path, bytes(synthetic(version=0x020B))), "boot protocol 2.11 is too old")


def test_an_initrd_that_does_not_fit_in_mem(tmp_path):
    result = _run(tmp_path, bytes(synthetic(init_size=60 * MiB)), "--mem", "80M",
                  initrd=bytes(8 * MiB))
    _one_line_error(result, "initrd of 8.0 MiB does not fit")


def test_options_that_do_not_go_with_a_kernel(tmp_path):
    kernel = bytes(synthetic())
    for args, text in ((["--policy", "1"], "--policy needs an encrypted mode (--sev, --sev-es or --sev-snp)"),
                       (["--owner-exec", "true"], "--session and --owner-exec need --sev or --sev-es"),
                       (["--sev-snp", "--owner-exec", "true"], "an SEV-SNP kernel attests itself"),
                       (["--sev-snp", "--session", "."], "an SEV-SNP kernel attests itself"),
                       (["--sev-es", "--gdb", "tcp::0"], "--gdb does not work with --kernel under --sev-es"),
                       (["--sev-snp", "--gdb", "tcp::0"], "--gdb does not work with --kernel under --sev-snp"),
                       (["--sev-snp", "--id-block", "."], "--id-block does not work with --kernel yet"),
                       (["--secret-file", __file__], "--secret-file does not work with --kernel yet"),
                       (["--trace", "t.jsonl", "--trace-insn"], "--trace-insn does not work with --kernel yet")):
        result = _run(tmp_path, kernel, *args)
        assert result.exit_code == 2 and text in result.output, (args, result.output)


def test_initrd_and_append_need_a_kernel(tmp_path):
    i = tmp_path / "initrd"
    i.write_bytes(b"x")
    result = CliRunner().invoke(main, ["run", "--initrd", str(i)])
    assert result.exit_code == 2 and "--initrd and --append go with --kernel" in result.output


def test_image_and_kernel_together(tmp_path):
    k = tmp_path / "bzImage"
    k.write_bytes(bytes(synthetic()))
    result = CliRunner().invoke(main, ["run", str(k), "--kernel", str(k)])
    assert result.exit_code == 2 and "give IMAGE or --kernel, not both" in result.output
