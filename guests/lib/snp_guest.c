/* MSG_REPORT_REQ / MSG_REPORT_RSP over the GHCB guest-request exit. See snp_guest.h. */
#include "snp_guest.h"

#include "aesgcm.h"
#include "ghcb.h"
#include "mem.h"
#include "paging.h"
#include "sev.h"

#define MSG_HDR_SIZE        0x60
#define MSG_REPORT_REQ      5
#define MSG_REPORT_RSP      6
#define MSG_REPORT_REQ_SIZE 0x60
#define MSG_REPORT_RSP_SIZE 0x4c0
#define AEAD_AES_256_GCM    1
#define SECRETS_VMPCK0      0x20
#define SECRETS_SEQNO0      0xa0  /* the OS area: the last sequence number used with VMPCK0 */

struct snp_msg_hdr {
    uint8_t  authtag[32];
    uint64_t msg_seqno;
    uint8_t  rsvd1[8];
    uint8_t  algo;
    uint8_t  hdr_version;
    uint16_t hdr_sz;
    uint8_t  msg_type;
    uint8_t  msg_version;
    uint16_t msg_sz;
    uint32_t rsvd2;
    uint8_t  msg_vmpck;
    uint8_t  rsvd3[35];
} __attribute__((packed));

_Static_assert(sizeof(struct snp_msg_hdr) == MSG_HDR_SIZE, "guest message header layout");

static uint8_t *req_page, *resp_page;
static int vmpck_burnt;
static uint8_t rsp_plain[MSG_REPORT_RSP_SIZE];
static uint8_t rsp_cipher[MSG_REPORT_RSP_SIZE];

static void iv_for(uint64_t seqno, uint8_t iv[AESGCM_IV_SIZE])
{
    memset(iv, 0, AESGCM_IV_SIZE);
    memcpy(iv, &seqno, 8);
}

/* Never use the key again: what Linux does after any failure of a guest request. */
static int burn(uint8_t *vmpck, int err)
{
    memset(vmpck, 0, AESGCM_KEY_SIZE);
    vmpck_burnt = 1;
    return err;
}

int snp_get_report(const uint8_t report_data[SNP_REPORT_DATA_SIZE], uint8_t report[SNP_REPORT_SIZE])
{
    volatile struct ghcb *g = ghcb_page();
    uint8_t *secrets = (uint8_t *)SNP_SECRETS_GPA;
    uint8_t *vmpck = secrets + SECRETS_VMPCK0;
    uint32_t *seqno_slot = (uint32_t *)(secrets + SECRETS_SEQNO0);

    if (sev_info()->mode != SEV_MODE_SEV_SNP || !g || vmpck_burnt)
        return SNP_ERR_NOT_SNP;
    if (!req_page) {
        req_page = shared_alloc(1);
        resp_page = shared_alloc(1);
        if (!req_page || !resp_page)
            return SNP_ERR_NO_PAGES;
    }

    uint64_t seqno = (uint64_t)*seqno_slot + 1;
    struct snp_msg_hdr hdr;
    uint8_t body[MSG_REPORT_REQ_SIZE], iv[AESGCM_IV_SIZE];

    memset(&hdr, 0, sizeof(hdr));
    hdr.msg_seqno = seqno;
    hdr.algo = AEAD_AES_256_GCM;
    hdr.hdr_version = 1;
    hdr.hdr_sz = MSG_HDR_SIZE;
    hdr.msg_type = MSG_REPORT_REQ;
    hdr.msg_version = 1;
    hdr.msg_sz = MSG_REPORT_REQ_SIZE;
    hdr.msg_vmpck = 0;
    memset(body, 0, sizeof(body));
    memcpy(body, report_data, SNP_REPORT_DATA_SIZE);  /* vmpl 0, key_sel 0 (VCEK) */
    iv_for(seqno, iv);
    aesgcm_seal(vmpck, iv, (const uint8_t *)&hdr + 0x30, MSG_HDR_SIZE - 0x30, body, body,
                sizeof(body), hdr.authtag);
    memset(req_page, 0, PAGE_SIZE);
    memcpy(req_page, &hdr, sizeof(hdr));
    memcpy(req_page + MSG_HDR_SIZE, body, sizeof(body));
    memset(resp_page, 0, PAGE_SIZE);

    ghcb_begin(g);
    if (ghcb_call(g, SVM_VMGEXIT_GUEST_REQUEST, (uint64_t)(uintptr_t)req_page,
                  (uint64_t)(uintptr_t)resp_page) != 0)
        return burn(vmpck, SNP_ERR_HV);
    uint64_t fw_err = g->sw_exit_info_2;

    if (fw_err)
        return burn(vmpck, fw_err & 0xffffffff ? (int)(fw_err & 0xffffffff) : SNP_ERR_HV);

    /* Copy the shared page once, then check and use only the private copy. */
    struct snp_msg_hdr rh;

    memcpy(&rh, resp_page, sizeof(rh));
    if (rh.algo != AEAD_AES_256_GCM || rh.hdr_version != 1 || rh.hdr_sz != MSG_HDR_SIZE ||
        rh.msg_type != MSG_REPORT_RSP || rh.msg_version != 1 || rh.msg_vmpck != 0 ||
        rh.msg_seqno != seqno + 1 || rh.msg_sz != MSG_REPORT_RSP_SIZE)
        return burn(vmpck, SNP_ERR_RESPONSE);
    memcpy(rsp_cipher, resp_page + MSG_HDR_SIZE, MSG_REPORT_RSP_SIZE);
    iv_for(rh.msg_seqno, iv);
    if (aesgcm_open(vmpck, iv, (const uint8_t *)&rh + 0x30, MSG_HDR_SIZE - 0x30, rsp_cipher,
                    rsp_plain, MSG_REPORT_RSP_SIZE, rh.authtag) != 0)
        return burn(vmpck, SNP_ERR_RESPONSE);
    *seqno_slot = (uint32_t)(seqno + 1);

    uint32_t status, size;

    memcpy(&status, rsp_plain, 4);
    memcpy(&size, rsp_plain + 4, 4);
    if (status != 0)
        return (int)status;
    if (size != SNP_REPORT_SIZE)
        return SNP_ERR_RESPONSE;
    memcpy(report, rsp_plain + 0x20, SNP_REPORT_SIZE);
    return 0;
}
