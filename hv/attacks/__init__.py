"""The attack lab: a malicious hypervisor reproducing the literature's attacks."""
