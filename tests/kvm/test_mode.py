"""The guest mode: one enum whose members still read, print and serialise as the old strings."""

import json

import pytest

from hv.kvm import VM_TYPES, Kvm, KvmError, Mode
from hv.hw.machine import Machine, MachineConfig


def test_each_mode_says_what_it_protects():
    table = {m: (m.encrypted, m.es, m.snp, m.label) for m in Mode}
    assert table == {
        Mode.PLAIN: (False, False, False, "plain"),
        Mode.SEV: (True, False, False, "SEV"),
        Mode.SEV_ES: (True, True, False, "SEV-ES"),
        Mode.SEV_SNP: (True, True, True, "SEV-SNP"),
    }


def test_modes_are_the_strings_users_type_and_json_shows():
    assert [str(m) for m in Mode] == ["plain", "sev", "sev-es", "sev-snp"]
    assert json.dumps({"mode": Mode.SEV_ES}) == '{"mode": "sev-es"}'
    assert f"{Mode.SEV_SNP}" == "sev-snp" and Mode.SEV_SNP.upper() == "SEV-SNP"
    assert Mode("sev-es") is Mode.SEV_ES and Mode.SEV == "sev"
    assert VM_TYPES == tuple(Mode)


def test_create_vm_takes_a_mode_or_its_string_and_refuses_others():
    kvm = Kvm(Machine(MachineConfig(dram_size=8 << 20)))
    assert kvm.create_vm("sev").type is Mode.SEV
    assert kvm.create_vm(Mode.SEV_ES).type is Mode.SEV_ES
    with pytest.raises(KvmError, match="unknown VM type 'tdx'"):
        kvm.create_vm("tdx")
