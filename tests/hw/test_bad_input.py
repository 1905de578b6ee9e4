"""Misaligned or out-of-range addresses, unmapped memory and invalid ASIDs: typed errors with
clear messages, and DRAM unchanged."""

import dataclasses

import pytest

from hv.hw.cpuid import EPYC
from hv.hw.engine import AesEngine
from hv.hw.errors import AddressError, AsidError, HwError
from hv.hw.machine import Machine, MachineConfig
from hv.hw.memctl import MemoryController
from hv.hw.npt import NestedPageTable
from hv.hw.ports import PspPort
from hv.hw.engine import KeySlotPort
from firmware.ports import PortAddressError, PortAsidError


@pytest.fixture
def mc():
    return MemoryController(1 << 20, AesEngine(15))


@pytest.mark.parametrize("spa,length", [(-1, 1), (1 << 20, 1), ((1 << 20) - 4, 8), (0, (1 << 20) + 1)])
def test_out_of_range_host_access(mc, spa, length):
    before = mc.raw_dump()
    with pytest.raises(AddressError, match="outside DRAM"):
        mc.read(spa, length)
    with pytest.raises(AddressError, match="outside DRAM"):
        mc.write(spa, bytes(max(length, 0)))
    assert mc.raw_dump() == before


def test_invalid_asid(mc):
    with pytest.raises(AsidError, match="outside 0..15"):
        mc.read(0, 16, slot=16)
    with pytest.raises(AsidError, match="has no key"):
        mc.write(0, bytes(16), slot=5)
    assert mc.raw_dump() == bytes(1 << 20)


def test_errors_share_a_base(mc):
    with pytest.raises(HwError):
        mc.read(1 << 30, 1)


@pytest.mark.parametrize("gpa,spa,size", [(0x1001, 0, 0x1000), (0, 0x1001, 0x1000), (0, 0, 0x800),
                                          (0, (1 << 20) - 0x1000, 0x2000), (0, 0, 0)])
def test_npt_rejects_bad_mappings(gpa, spa, size):
    npt = NestedPageTable(1 << 20)
    with pytest.raises(AddressError):
        npt.map(gpa, spa, size)
    assert npt.entries == {}


def test_psp_port_translates_errors_for_the_firmware(mc):
    port = PspPort(mc, KeySlotPort(mc.engine), min_sev_asid=8)
    with pytest.raises(PortAddressError):
        port.read(1 << 30, 16)
    with pytest.raises(PortAsidError):
        port.read_guest(0, 0, 16)  # ASID 0 is the host: never a guest key
    with pytest.raises(PortAsidError):
        port.program_key(99, bytes(16))
    with pytest.raises(PortAsidError):
        port.read_guest(3, 0, 16)  # no key programmed


def test_psp_port_answers_the_parts_own_cpuid(mc):
    """The PSP checks SNP CPUID pages against the part it sits in: the CpuModel it was given."""
    part = dataclasses.replace(EPYC, cbitpos=51, phys_bits=52)
    port = PspPort(mc, KeySlotPort(mc.engine), min_sev_asid=8, model=part)
    assert port.host_cpuid(0x8000001F, 0)[1] & 0x3F == 51
    assert port.host_cpuid(0x80000008, 0)[0] & 0xFF == 52
    assert PspPort(mc, KeySlotPort(mc.engine), 8).host_cpuid(0x8000001F, 0)[1] & 0x3F == 47
    assert EPYC.host_cpuid(0x80000007) == (0, 0, 0, 1 << 8)  # invariant TSC


def test_machine_dram_size_must_be_pages():
    with pytest.raises(AddressError, match="multiple of 4 KiB"):
        Machine(MachineConfig(dram_size=12345))


def test_tweak_constants_validated():
    with pytest.raises(ValueError, match="tweak constants"):
        AesEngine(15, tweak_constants=[1, 2, 3])
