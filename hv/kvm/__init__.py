"""The hypervisor: a KVM-shaped API over the machine (untrusted: sees only what KVM would)."""

from hv.kvm import exits
from hv.kvm.kvm import VM_TYPES, Kvm, KvmError, MemorySlot, Vm
from hv.kvm.mode import Mode
from hv.kvm.vcpu import MemoryFault, Vcpu
from hv.hw.rmp import RmpViolation  # what a host write to an SNP guest's page raises

__all__ = ["Kvm", "KvmError", "MemoryFault", "MemorySlot", "Mode", "RmpViolation", "VM_TYPES", "Vcpu", "Vm",
           "exits"]
