"""hv: an emulated KVM-style hypervisor whose guests run with AMD SEV-style memory encryption.

Layers, top to bottom (see DESIGN in the docs): hv.owner (the guest owner, trusted), hv.vmm and
hv.kvm (the untrusted VMM and hypervisor), hv.hw (the machine), and the PSP firmware in the
separate `firmware` package. The Python entry points most people want:

    from hv.vmm import Vmm, VmmConfig
    result = Vmm(VmmConfig(image=open("guests/hello.img", "rb").read())).run()
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
