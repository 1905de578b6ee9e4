"""The VMM (user space, untrusted): image loading, devices, the SEV launch flow, the run loop."""

from hv.vmm.vmm import (EXIT_CRASH, EXIT_INTERRUPTED, EXIT_LAUNCH, EXIT_TIMEOUT, EXIT_USAGE,
                        LaunchError, RunResult, Vmm, VmmConfig)

__all__ = ["EXIT_CRASH", "EXIT_INTERRUPTED", "EXIT_LAUNCH", "EXIT_TIMEOUT", "EXIT_USAGE",
           "LaunchError", "RunResult", "Vmm", "VmmConfig"]
