import json

from click.testing import CliRunner

from hv.cli import main


def test_ok_passes_on_a_healthy_platform(psp_state):
    r = CliRunner().invoke(main, ["ok", "--json", "--psp-state", psp_state])
    assert r.exit_code == 0, r.output
    tree = json.loads(r.output)
    assert tree["status"] == "PASS"
    names = [c["name"] for c in tree["children"]]
    assert any("SEV_STATUS" in n for n in names) and any("certificate chain" in n for n in names)


def test_ok_fails_with_a_hint_on_a_corrupt_psp_state(tmp_path):
    state = tmp_path / "psp.json"
    state.write_text("{not json")
    r = CliRunner().invoke(main, ["ok", "--psp-state", str(state)])
    assert r.exit_code == 1
    assert "[ FAIL ]" in r.output and "hint:" in r.output
    assert "Traceback" not in r.output


def test_run_with_a_corrupt_psp_state_is_a_launch_error(tmp_path):
    from pathlib import Path

    state = tmp_path / "psp.json"
    state.write_text("{not json")
    hello = Path(__file__).resolve().parents[2] / "guests" / "hello.img"
    r = CliRunner().invoke(main, ["run", str(hello), "--sev", "--psp-state", str(state)])
    assert r.exit_code == 3
    assert r.output.startswith("hv: launch failed: the PSP did not start:")
