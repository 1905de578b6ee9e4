"""VirTEE's sev-snp-measure as the oracle of the SNP launch digest of every committed guest.

sev-snp-measure computes launch digests of OVMF launches; its lower layers are driven here page
by page with hv's launch layout (which pages, which types, which GPAs):
- `sevsnpmeasure.gctx.GCTX` builds every PAGE_INFO and hashes it, with its own code;
- the boot vCPU's VMSA is built with its `SevEsSaveArea` structure from hv's documented entry
  state (docs/guest-abi.md) and the EFER bit sev-snp-measure puts in every VMSA because KVM does
  (SVME), and must equal, byte for byte, the page hv launches.
The digest it gets must be the owner's prediction (`hv owner measure --snp`) and the VMM's."""

from __future__ import annotations

from pathlib import Path

import pytest

from hv import boot
from hv.owner._digest import snp_measurement
from hv.owner._inputs import DEFAULT_CBITPOS

ssm_gctx = pytest.importorskip("sevsnpmeasure.gctx",
                               reason="the oracle sev-snp-measure is not installed "
                                      "(pip install -e '.[test]')")
ssm_vmsa = pytest.importorskip("sevsnpmeasure.vmsa")

GUESTS = Path(__file__).resolve().parents[2] / "guests"
IMAGES = sorted(GUESTS.glob("*.img"))
MEM = 64 << 20
PAGE_TYPES = {1: "NORMAL", 2: "VMSA", 5: "SECRETS"}


def _oracle_vmsa(entry: int) -> bytes:
    """hv's boot vCPU (docs/guest-abi.md, Entry state) in sev-snp-measure's save-area layout."""
    kvm_efer = ssm_vmsa.VMSA.build_save_area(0xFFFFFFF0, 1, 0).efer  # "KVM enables EFER_SVME"
    Seg = ssm_vmsa.VmcbSeg
    code, data = Seg(0, 0x0A9B, 0xFFFFFFFF, 0), Seg(0, 0x0C93, 0xFFFFFFFF, 0)
    area = ssm_vmsa.SevEsSaveArea(
        es=data, cs=code, ss=data, ds=data, fs=data, gs=data,
        gdtr=Seg(0, 0, 0, 0), idtr=Seg(0, 0, 0, 0),
        ldtr=Seg(0, 0x82, 0xFFFF, 0), tr=Seg(0, 0x8B, 0xFFFF, 0),
        efer=0xD00 | kvm_efer,          # LME, LMA, NXE + SVME
        cr4=0x6A0, cr3=0x1000, cr0=0x80010033,
        dr7=0x400, dr6=0xFFFF0FF0, rflags=0x2,
        rip=entry, rsp=0x10000, rsi=0x8000,
        g_pat=0x0007040600070406,
        sev_features=1,                 # SNPActive
        xcr0=1,
    )
    return bytes(area)


def _elf_entry(image: bytes) -> int:
    return int.from_bytes(image[0x18:0x20], "little")


def test_there_are_committed_guests():
    assert len(IMAGES) >= 5


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_sev_snp_measure_digest_equals_hvs(path):
    """Scenario: for each committed guest, sev-snp-measure's GCTX fed hv's launch pages, with a
    VMSA built in its own layout (SVME set), ends at the digest hv's owner and VMM predict."""
    image = path.read_bytes()
    pages = boot.snp_launch_pages(image, MEM, DEFAULT_CBITPOS)
    assert [kind for _g, _c, kind in pages][-1] == 2, "the VMSA is launched last"
    gctx = ssm_gctx.GCTX()
    for gpa, contents, kind in pages:
        assert kind in PAGE_TYPES, f"page type {kind} at {gpa:#x}"
        if kind == 1:
            gctx.update_normal_pages(gpa, contents)
        elif kind == 5:
            gctx.update_secrets_page(gpa)
        else:
            assert gpa == ssm_gctx.GCTX.VMSA_GPA
            vmsa = _oracle_vmsa(_elf_entry(image))
            assert vmsa == contents, "hv's VMSA differs from the one built in the oracle's layout"
            gctx.update_vmsa_page(vmsa)
    oracle = gctx.ld()
    assert oracle == snp_measurement(image, MEM, DEFAULT_CBITPOS)
    assert oracle == boot.snp_launch_digest(image, MEM, DEFAULT_CBITPOS)
