"""Status codes, command ids, states and the policy parser against sev-reference 5.1-5.5."""

import pytest

from sevwire import (
    Cmd,
    GuestState,
    PlatformState,
    Policy,
    PolicyError,
    Status,
    parse_policy,
    policy_api_major,
    policy_api_minor,
    status_hint,
    status_name,
)

# sev-reference 5.3, transcribed by hand from the document's table.
REFERENCE_STATUS = """
0x00 SUCCESS 0x01 INVALID_PLATFORM_STATE 0x02 INVALID_GUEST_STATE 0x03 INVALID_CONFIG
0x04 INVALID_LEN 0x05 ALREADY_OWNED 0x06 INVALID_CERTIFICATE 0x07 POLICY_FAILURE 0x08 INACTIVE
0x09 INVALID_ADDRESS 0x0A BAD_SIGNATURE 0x0B BAD_MEASUREMENT 0x0C ASID_OWNED 0x0D INVALID_ASID
0x0E WBINVD_REQUIRED 0x0F DFFLUSH_REQUIRED 0x10 INVALID_GUEST 0x11 INVALID_COMMAND 0x12 ACTIVE
0x13 HWERROR_PLATFORM 0x14 HWERROR_UNSAFE 0x15 UNSUPPORTED 0x16 INVALID_PARAM 0x17 RESOURCE_LIMIT
0x18 SECURE_DATA_INVALID 0x19 INVALID_PAGE_SIZE 0x1A INVALID_PAGE_STATE 0x1B INVALID_MDATA_ENTRY
0x1C INVALID_PAGE_OWNER 0x1D AEAD_OFLOW 0x1F EXIT_RING_BUFFER 0x20 RMP_INIT_REQUIRED 0x27 INVALID_KEY
""".split()


def test_status_codes_match_reference_table():
    pairs = list(zip(REFERENCE_STATUS[::2], REFERENCE_STATUS[1::2]))
    for code, name in pairs:
        assert Status(int(code, 16)).name == name


def test_status_covers_0_to_0x27_except_unassigned_0x1e():
    assert sorted(int(s) for s in Status) == [c for c in range(0x28) if c != 0x1E]


def test_every_status_has_a_one_line_hint():
    for status in Status:
        assert status.hint and "\n" not in status.hint


def test_unknown_status_is_named_not_raised():
    assert status_name(0x1E) == "UNKNOWN(0x1e)"
    assert status_name(0x0B) == "BAD_MEASUREMENT"
    assert status_hint(0x99)


def test_command_ids_match_reference():
    expected = {
        "INIT": 0x01, "SHUTDOWN": 0x02, "PLATFORM_RESET": 0x03, "PLATFORM_STATUS": 0x04,
        "PEK_GEN": 0x05, "PEK_CSR": 0x06, "PEK_CERT_IMPORT": 0x07, "PDH_CERT_EXPORT": 0x08,
        "PDH_GEN": 0x09, "DF_FLUSH": 0x0A, "DOWNLOAD_FIRMWARE": 0x0B, "GET_ID": 0x0C, "INIT_EX": 0x0D,
        "DECOMMISSION": 0x20, "ACTIVATE": 0x21, "DEACTIVATE": 0x22, "GUEST_STATUS": 0x23,
        "LAUNCH_START": 0x30, "LAUNCH_UPDATE_DATA": 0x31, "LAUNCH_UPDATE_VMSA": 0x32,
        "LAUNCH_MEASURE": 0x33, "LAUNCH_SECRET": 0x34, "LAUNCH_FINISH": 0x35, "ATTESTATION": 0x36,
        "SEND_START": 0x40, "SEND_CANCEL": 0x44, "RECEIVE_START": 0x50, "RECEIVE_FINISH": 0x53,
        "DBG_DECRYPT": 0x60, "DBG_ENCRYPT": 0x61,
    }
    for name, value in expected.items():
        assert Cmd[name] == value
    assert Cmd.LAUNCH_UPDATE_SECRET is Cmd.LAUNCH_SECRET
    assert Cmd.FACTORY_RESET is Cmd.PLATFORM_RESET


def test_states():
    assert [PlatformState.UNINIT, PlatformState.INIT, PlatformState.WORKING] == [0, 1, 2]
    assert [g.value for g in GuestState] == list(range(7))
    assert GuestState.LSECRET == 2 and GuestState.RUNNING == 3


def test_policy_bits():
    assert (Policy.NODBG, Policy.NOKS, Policy.ES, Policy.NOSEND, Policy.DOMAIN, Policy.SEV) == (1, 2, 4, 8, 16, 32)


@pytest.mark.parametrize("text,value", [
    ("0x1", 1), ("5", 5), ("0b11", 3), (" 0x00120001 ", 0x120001), ("NODBG|NOKS", 3), ("nodbg,es", 5), (7, 7),
])
def test_parse_policy_accepts(text, value):
    assert parse_policy(text) == value


@pytest.mark.parametrize("bad", ["", "0x1_0000_0000", "-1", "NOPE", "0x40", 2**32, True, 1.5])
def test_parse_policy_refuses(bad):
    with pytest.raises(PolicyError):
        parse_policy(bad)


def test_parse_policy_reserved_allowed_on_request():
    assert parse_policy("0x40", allow_reserved=True) == 0x40


def test_policy_api_fields():
    assert policy_api_major(0xAB12_0000) == 0x12
    assert policy_api_minor(0xAB12_0000) == 0xAB
