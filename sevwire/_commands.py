"""SEV firmware command ids and platform/guest states (sev-reference 5.1 and 5.4).

Names follow AMD's spec (`PLATFORM_RESET`, `LAUNCH_SECRET`); Linux's names for the same ids are
aliases so code written against `psp-sev.h` still greps.
"""

from __future__ import annotations

import enum

__all__ = ["Cmd", "PlatformState", "GuestState", "InitFlags"]


class Cmd(enum.IntEnum):
    """A PSP mailbox command id (the value written with the doorbell)."""

    INIT = 0x01
    SHUTDOWN = 0x02
    PLATFORM_RESET = 0x03
    FACTORY_RESET = 0x03  # Linux's name
    PLATFORM_STATUS = 0x04
    PEK_GEN = 0x05
    PEK_CSR = 0x06
    PEK_CERT_IMPORT = 0x07
    PDH_CERT_EXPORT = 0x08
    PDH_GEN = 0x09
    DF_FLUSH = 0x0A
    DOWNLOAD_FIRMWARE = 0x0B
    GET_ID = 0x0C
    INIT_EX = 0x0D
    NOP = 0x0E
    RING_BUFFER = 0x0F
    DECOMMISSION = 0x20
    ACTIVATE = 0x21
    DEACTIVATE = 0x22
    GUEST_STATUS = 0x23
    COPY = 0x24
    ACTIVATE_EX = 0x25
    LAUNCH_START = 0x30
    LAUNCH_UPDATE_DATA = 0x31
    LAUNCH_UPDATE_VMSA = 0x32
    LAUNCH_MEASURE = 0x33
    LAUNCH_SECRET = 0x34
    LAUNCH_UPDATE_SECRET = 0x34  # Linux's name
    LAUNCH_FINISH = 0x35
    ATTESTATION = 0x36
    SEND_START = 0x40
    SEND_UPDATE_DATA = 0x41
    SEND_UPDATE_VMSA = 0x42
    SEND_FINISH = 0x43
    SEND_CANCEL = 0x44
    RECEIVE_START = 0x50
    RECEIVE_UPDATE_DATA = 0x51
    RECEIVE_UPDATE_VMSA = 0x52
    RECEIVE_FINISH = 0x53
    DBG_DECRYPT = 0x60
    DBG_ENCRYPT = 0x61
    SWAP_OUT = 0x70
    SWAP_IN = 0x71
    SNP_INIT = 0x81
    SNP_DECOMMISSION = 0x90
    SNP_ACTIVATE = 0x91
    SNP_GCTX_CREATE = 0x93
    SNP_GUEST_REQUEST = 0x94
    SNP_LAUNCH_START = 0xA0
    SNP_LAUNCH_UPDATE = 0xA1
    SNP_LAUNCH_FINISH = 0xA2
    SNP_DBG_DECRYPT = 0xB0
    SNP_DBG_ENCRYPT = 0xB1
    SNP_PAGE_RECLAIM = 0xC7


class PlatformState(enum.IntEnum):
    """The PSP's platform state, as PLATFORM_STATUS reports it."""

    UNINIT = 0
    INIT = 1
    WORKING = 2


class GuestState(enum.IntEnum):
    """A guest context's state (GUEST_STATUS `state`); values from AMD's sev-tool."""

    UNINIT = 0
    LUPDATE = 1
    LSECRET = 2
    RUNNING = 3
    SUPDATE = 4
    RUPDATE = 5
    SENT = 6


class InitFlags(enum.IntFlag):
    """INIT/INIT_EX `flags`: bit 0 asks for SEV-ES, which needs a 1 MiB, 1 MiB-aligned TMR."""

    SEV_ES = 0x1
