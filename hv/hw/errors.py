"""Typed errors of the machine layer. Each message is one line a user can act on."""

__all__ = ["AddressError", "AsidError", "HwError", "KeySlotError"]


class HwError(Exception):
    """Base of every error the emulated hardware raises."""


class AddressError(HwError, ValueError):
    """A system-physical address or range outside DRAM, or misaligned where alignment is required."""


class AsidError(HwError, ValueError):
    """An ASID outside the range CPUID 0x8000001F reports."""


class KeySlotError(HwError):
    """A memory-controller key slot that holds no key was used."""
