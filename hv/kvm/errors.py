"""The hypervisor's own error, in a module of its own so that every part of hv.kvm can raise it
without importing the VM objects (hv.kvm.sev_snp is reached from the vCPU's exit handling)."""

from __future__ import annotations

__all__ = ["KvmError"]


class KvmError(Exception):
    """An ioctl-level error (EINVAL, ENOMEM, EEXIST...): bad arguments from user space."""
