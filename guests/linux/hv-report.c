/* hv-report: ask for an SEV-SNP attestation report from Linux user space.
 *
 *   hv-report [--ext] NONCE_HEX
 *
 * NONCE_HEX is 128 hex digits, the 64 bytes of the report's report_data. The request goes to
 * the kernel's sev-guest driver (/dev/sev-guest; include/uapi/linux/sev-guest.h as of Linux
 * 6.1), which seals it with VMPCK0 and sends it to the PSP: SNP_GET_REPORT, or with --ext
 * SNP_GET_EXT_REPORT, which also fetches the host's certificate table (GHCB NAE 0x80000012).
 * Output, one item a line:
 *
 *   report_data: <128 hex digits>                the nonce asked for
 *   report: <2368 hex digits>                    the 1184-byte report
 *   cert: <guid> <length>                        --ext: for each certificate table entry,
 *   cert_data: <guid> <hex digits>               its length and its bytes
 *
 * A failure is one line on stderr, "hv-report: <what failed> (errno N, fw_err 0x...)", and exit
 * status 1; bad usage exits with 2. There is no libc: raw system calls and its own _start, so
 * the static binary is small and the same compiler gives the same bytes (tools/build_guests.py).
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

/* struct snp_report_req: what MSG_REPORT_REQ asks for. */
struct snp_report_req {
    u8 user_data[64];       /* becomes the report's report_data */
    u32 vmpl;               /* the VMPL the report speaks for: 0, the kernel's */
    u8 rsvd[28];            /* must be zero */
};

/* struct snp_report_resp: the decrypted MSG_REPORT_RSP (offsets below), in a 4000-byte buffer. */
struct snp_report_resp {
    u8 data[4000];
};

/* struct snp_ext_report_req: a report request and a user buffer for the certificate table. */
struct snp_ext_report_req {
    struct snp_report_req data;
    u64 certs_address;      /* where the driver copies the table */
    u32 certs_len;          /* a multiple of 4096, at most 16 KiB (SEV_FW_BLOB_MAX_SIZE) */
};

/* struct snp_guest_request_ioctl: the argument of every sev-guest ioctl. */
struct snp_guest_request_ioctl {
    u8 msg_version;         /* the message format's version: 1 */
    u64 req_data;           /* user address of the request structure */
    u64 resp_data;          /* user address of the response structure */
    u64 fw_err;             /* bits 31:0 the firmware's status, 63:32 the hypervisor's */
};

/* A certificate table entry; the table ends with an all-zero entry, offsets count from its start. */
struct cert_entry {
    u8 guid[16];            /* RFC 4122 byte order, the order of the text form */
    u32 offset;
    u32 length;
};

_Static_assert(sizeof(struct snp_report_req) == 96, "snp_report_req");
_Static_assert(sizeof(struct snp_ext_report_req) == 112, "snp_ext_report_req");
_Static_assert(sizeof(struct snp_guest_request_ioctl) == 32, "snp_guest_request_ioctl");
_Static_assert(sizeof(struct cert_entry) == 24, "cert_entry");

/* _IOWR('S', nr, struct snp_guest_request_ioctl): direction 3 << 30 | size << 16 | type << 8 | nr. */
#define SNP_IOWR(nr) (3UL << 30 | sizeof(struct snp_guest_request_ioctl) << 16 | 'S' << 8 | (nr))
#define SNP_GET_REPORT      SNP_IOWR(0x0)
#define SNP_GET_EXT_REPORT  SNP_IOWR(0x2)

/* MSG_REPORT_RSP: status u32 at 0, report_size u32 at 4, the report at 0x20. */
#define RSP_STATUS          0x00
#define RSP_REPORT_SIZE     0x04
#define RSP_REPORT          0x20
#define REPORT_SIZE         0x4a0
#define REPORT_DATA         0x50    /* report_data's offset in the report */
#define CERTS_LEN           16384

#define SYS_write       1
#define SYS_open        2
#define SYS_close       3
#define SYS_ioctl       16
#define SYS_exit_group  231
#define O_RDWR          2
#define EINTR           4

static long syscall3(long n, long a, long b, long c)
{
    long ret;

    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static void __attribute__((noreturn)) exit_group(int status)
{
    for (;;)
        syscall3(SYS_exit_group, status, 0, 0);
}

/* Buffered output: a line of 2368 hex digits goes out in one write. */
struct out {
    u32 len;
    char buf[4096];
};

static struct out out, err;     /* stdout and stderr */

static void fail(const char *what, long error, u64 fw_err);

static void flush(struct out *o)
{
    for (u32 done = 0; done < o->len;) {
        long n = syscall3(SYS_write, o == &err ? 2 : 1, (long)(o->buf + done), o->len - done);

        if (n == -EINTR)
            continue;
        if (n <= 0) {
            o->len = 0;
            if (o == &out)
                fail("write to stdout failed", n < 0 ? -n : 0, 0);
            exit_group(1);
        }
        done += n;
    }
    o->len = 0;
}

static void put(struct out *o, const char *s)
{
    for (; *s; s++) {
        if (o->len == sizeof(o->buf))
            flush(o);
        o->buf[o->len++] = *s;
    }
}

static void put_hex(struct out *o, const u8 *p, u32 n)
{
    static const char digits[] = "0123456789abcdef";
    char two[3] = {0};

    for (u32 i = 0; i < n; i++) {
        two[0] = digits[p[i] >> 4];
        two[1] = digits[p[i] & 15];
        put(o, two);
    }
}

/* An unsigned number in base 10 or 16, without leading zeros. */
static void put_num(struct out *o, u64 v, u32 base)
{
    char text[24], *s = text + sizeof(text) - 1;

    *s = 0;
    do {
        *--s = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    put(o, s);
}

static void fail(const char *what, long error, u64 fw_err)
{
    err.len = 0;
    put(&err, "hv-report: ");
    put(&err, what);
    put(&err, " (errno ");
    put_num(&err, error, 10);
    put(&err, ", fw_err 0x");
    put_num(&err, fw_err, 16);
    put(&err, ")\n");
    flush(&err);
    exit_group(1);
}

static u32 le32(const u8 *p)
{
    return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;      /* 'A'-'F' to 'a'-'f' */
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* 128 hex digits into 64 bytes; 0 for anything else. */
static int parse_nonce(const char *s, u8 *nonce)
{
    for (u32 i = 0; i < 64; i++) {
        int hi = hex_value(s[2 * i]), lo = hi < 0 ? -1 : hex_value(s[2 * i + 1]);

        if (lo < 0)
            return 0;
        nonce[i] = hi << 4 | lo;
    }
    return s[128] == 0;
}

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

/* The GUID in its text form, 8-4-4-4-12 lowercase hex digits. */
static void put_guid(struct out *o, const u8 *g)
{
    static const u8 group[] = {4, 2, 2, 2, 6};

    for (u32 i = 0; i < sizeof(group); g += group[i++]) {
        put(o, i ? "-" : "");
        put_hex(o, g, group[i]);
    }
}

static struct snp_ext_report_req req;
static struct snp_report_resp resp;
static u8 certs[CERTS_LEN] __attribute__((aligned(4096)));

/* The number of entries before the terminator; fails unless every entry lies in the buffer. */
static u32 cert_count(void)
{
    const struct cert_entry *e = (const struct cert_entry *)certs;
    u32 n = 0;

    for (;; n++, e++) {
        if ((const u8 *)(e + 1) > certs + CERTS_LEN)
            fail("certificate table has no terminating entry", 0, 0);
        u64 end = (u64)e->offset + e->length;
        int zero = e->offset == 0 && e->length == 0;

        for (u32 i = 0; i < 16; i++)
            zero &= e->guid[i] == 0;
        if (zero)
            return n;
        if (end > CERTS_LEN)
            fail("certificate table entry points past the buffer", 0, 0);
    }
}

static void __attribute__((noreturn, used)) start(long *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    int ext = argc == 3 && streq(argv[1], "--ext");
    struct snp_guest_request_ioctl io = {1, (u64)&req, (u64)&resp, 0};

    if (argc != 2 + ext || !parse_nonce(argv[1 + ext], req.data.user_data)) {
        put(&err, "usage: hv-report [--ext] NONCE_HEX (128 hex digits, the report_data)\n");
        flush(&err);
        exit_group(2);
    }
    if (ext) {
        req.certs_address = (u64)certs;
        req.certs_len = CERTS_LEN;
    } else {
        io.req_data = (u64)&req.data;
    }

    long fd = syscall3(SYS_open, (long)"/dev/sev-guest", O_RDWR, 0);

    if (fd < 0)
        fail("open /dev/sev-guest failed", -fd, 0);
    long rc = syscall3(SYS_ioctl, fd, ext ? SNP_GET_EXT_REPORT : SNP_GET_REPORT, (long)&io);

    if (rc < 0)
        fail(ext ? "ioctl SNP_GET_EXT_REPORT failed" : "ioctl SNP_GET_REPORT failed", -rc, io.fw_err);
    /* The response's status is the firmware's (SNP_GUEST_REQUEST's status codes): shown as fw_err. */
    if (le32(resp.data + RSP_STATUS) != 0)
        fail("the report response's status is not 0", 0, le32(resp.data + RSP_STATUS));
    if (le32(resp.data + RSP_REPORT_SIZE) != REPORT_SIZE)
        fail("the report response's report_size is not 0x4a0", 0, io.fw_err);
    const u8 *report = resp.data + RSP_REPORT;

    for (u32 i = 0; i < 64; i++)
        if (report[REPORT_DATA + i] != req.data.user_data[i])
            fail("the report's report_data is not the nonce", 0, io.fw_err);
    u32 ncerts = ext ? cert_count() : 0;

    syscall3(SYS_close, fd, 0, 0);

    put(&out, "report_data: ");
    put_hex(&out, req.data.user_data, 64);
    put(&out, "\nreport: ");
    put_hex(&out, report, REPORT_SIZE);
    put(&out, "\n");
    for (u32 i = 0; i < ncerts; i++) {
        const struct cert_entry *e = (const struct cert_entry *)certs + i;

        put(&out, "cert: ");
        put_guid(&out, e->guid);
        put(&out, " ");
        put_num(&out, e->length, 10);
        put(&out, "\ncert_data: ");
        put_guid(&out, e->guid);
        put(&out, " ");
        put_hex(&out, certs + e->offset, e->length);
        put(&out, "\n");
    }
    flush(&out);
    exit_group(0);
}

/* The kernel enters with argc at (%rsp), then argv; no return address, so start() gets the
 * stack pointer and the ABI's 16-byte alignment at its call. */
__asm__(".globl _start\n"
        "_start:\n"
        "    xor %ebp, %ebp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call start\n"
        "    hlt\n");
