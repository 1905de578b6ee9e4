"""The guest's protection mode, which is KVM's VM type: plain, SEV, SEV-ES or SEV-SNP.

One enum instead of strings compared all over: what each mode implies (encrypted memory,
encrypted register state, the integrity table) is a property here, so a new mode or a renamed
one cannot leave a stray comparison behind. Members are strings ("sev-es"), so the CLI's
choices, `--json` output and error messages read exactly as before.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Mode"]


class Mode(StrEnum):
    PLAIN = "plain"
    SEV = "sev"
    SEV_ES = "sev-es"
    SEV_SNP = "sev-snp"

    @property
    def encrypted(self) -> bool:
        """Guest memory is encrypted with a key of its own ASID (every mode but plain)."""
        return self is not Mode.PLAIN

    @property
    def es(self) -> bool:
        """Register state is encrypted in a VMSA and exits go through the GHCB (SEV-ES, SEV-SNP);
        such a guest needs an ASID from the SEV-ES range."""
        return self in (Mode.SEV_ES, Mode.SEV_SNP)

    @property
    def snp(self) -> bool:
        """Memory integrity through the RMP, attestation reports instead of a launch session."""
        return self is Mode.SEV_SNP

    @property
    def sev_status(self) -> int:
        """What the guest reads in MSR SEV_STATUS (0xC0010131): bit 0 SEV, 1 SEV-ES, 2 SEV-SNP."""
        return int(self.encrypted) | int(self.es) << 1 | int(self.snp) << 2

    @property
    def label(self) -> str:
        """The mode as people write it: "plain", "SEV", "SEV-ES", "SEV-SNP"."""
        return "plain" if self is Mode.PLAIN else self.value.upper()
