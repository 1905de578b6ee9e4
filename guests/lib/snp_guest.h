/* SEV-SNP guest messages: an attestation report from the PSP, asked for through the hypervisor.
 *
 * The PSP put four VMPCKs into the guest's secrets page (GPA 0x9000 under --sev-snp, launched as
 * SNP_LAUNCH_UPDATE's SECRETS page, so the hypervisor never saw them). A request is sealed with
 * VMPCK0 (AES-256-GCM, IV = sequence number), carried by the hypervisor in two shared pages
 * (GHCB exit 0x80000011), and the response is opened with the same key: the hypervisor can
 * delay or drop a report, never read, alter or forge one. */
#ifndef HV_GUEST_SNP_GUEST_H
#define HV_GUEST_SNP_GUEST_H

#include <stdint.h>

#define SNP_SECRETS_GPA        0x9000UL
#define SNP_REPORT_DATA_SIZE   64
#define SNP_REPORT_SIZE        0x4a0
#define SVM_VMGEXIT_GUEST_REQUEST 0x80000011ull

/* Errors of snp_get_report (negative; a positive value is the PSP's status). */
#define SNP_ERR_NOT_SNP    (-1)  /* the guest does not run under SEV-SNP */
#define SNP_ERR_NO_PAGES   (-2)  /* no shared pages for the messages */
#define SNP_ERR_HV         (-3)  /* the hypervisor refused the exit */
#define SNP_ERR_RESPONSE   (-4)  /* the response is malformed or does not authenticate */

/* Ask the PSP for an attestation report binding `report_data`; 0 and the 1184-byte report in
 * `report`, or an error above. After a failure the VMPCK is not used again (a lost response
 * would leave the sequence numbers out of step, and reusing one would reuse an IV). */
int snp_get_report(const uint8_t report_data[SNP_REPORT_DATA_SIZE], uint8_t report[SNP_REPORT_SIZE]);

#endif
