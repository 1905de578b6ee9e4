/* service: a small request/response guest, the target of the attack lab's active attacks.
 *
 * The guest registers a two-page ring it shares with the hypervisor (port 0x510, the GPA of the
 * ring), then serves requests: it rings the doorbell (port 0x511), the hypervisor writes the next
 * request into the ring before resuming it, the guest answers in the ring and rings again. This
 * is the shape of a virtio device, and of the network services the SEV papers attacked.
 *
 * Its secret is the launch secret when one was injected (first 32 bytes at GPA 0x9000), under
 * SEV-SNP the first 32 bytes of the secret the owner released to the attested guest (boot
 * information flags bit 0, lib/secret.h), else the built-in DEFAULT_SECRET. Requests:
 *   READ_PAGE n   copy public page n (of PUBLIC_PAGES, private memory) into ring page 1
 *   CHECK_PIN p   compare p with the PIN (the secret's first 4 bytes); three wrong PINs lock
 *   LADDER        a toy constant-time ladder over the secret's first 64 bits, one exit per bit
 *   BRANCH        a walk over the secret's first 16 bits that calls one of two functions, each
 *                 on its own code page, per bit
 *   REGS          an exit with the secret's first 8 bytes live in RBX
 *   EXIT v        stop with status v
 * A measured configuration block (`config`, in .data) can enable a debug dump of the secret;
 * the image ships with it off. debug_shell() is never called by the guest itself.
 * The ring's first 16 bytes hold the non-secret HV-SHARED-MARKER.
 *
 * Exit status: the EXIT request's value; 1 when the boot information or the shared memory is
 * unusable; 3 when a secret was offered but could not be obtained (one line
 * "service: no secret: <reason>"). */
#include "hvguest.h"
#include "secret.h"

#define DEFAULT_SECRET "HV-DEFAULT-SECRET-0123456789abcd"
#define SHARED_MARKER  "HV-SHARED-MARKER"
#define SECRET_LEN     32
#define PUBLIC_PAGES   4
#define MAX_TRIES      3
#define EXIT_NO_SECRET 3

#define PORT_REGISTER  0x510
#define PORT_DOORBELL  0x511
#define PORT_STEP      0x512
#define PORT_REGS      0x513

enum { OP_NONE, OP_READ_PAGE, OP_CHECK_PIN, OP_LADDER, OP_BRANCH, OP_REGS, OP_EXIT };
enum { ST_OK, ST_WRONG, ST_LOCKED, ST_BAD };

struct ring {                 /* ring page 0; page 1 holds READ_PAGE data */
    char marker[16];
    volatile uint32_t op, arg;
    volatile uint32_t status, len;
    volatile uint64_t value;
};

struct config {
    uint64_t debug_dump; /* non-zero: print the secret at start-up (a debugging aid) */
    uint64_t reserved;
};

/* Measured with the image; the owner checks it is off through the launch measurement. */
static struct config config __attribute__((section(".data.config"), aligned(16))) = {0, 0};

static char public_pages[PUBLIC_PAGES][PAGE_SIZE]
    __attribute__((section(".data.public"), aligned(PAGE_SIZE))) = {
    "PUBLIC PAGE 0: nothing to see here, this text is part of the image.",
    "PUBLIC PAGE 1: the service hands these pages to anyone who asks.",
    "PUBLIC PAGE 2: press releases.",
    "PUBLIC PAGE 3: the end.",
};

static uint8_t secret[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

static struct pin_state {
    uint32_t attempts;
    uint32_t locked;
} pin_state __attribute__((aligned(PAGE_SIZE)));

static void hexdump_secret(const char *why)
{
    printf("%s: secret = ", why);
    for (int i = 0; i < SECRET_LEN; i++)
        printf("%02x", secret[i]);
    printf("\n");
}

/* Never called by the guest: reaching it means someone else chose where the guest runs. */
__attribute__((noinline, used)) void debug_shell(void)
{
    hexdump_secret("debug shell");
    guest_exit(0x42);
}

/* Keeps debug_shell in the image (the linker drops what nothing refers to). */
static void (*volatile debug_entry)(void) = debug_shell;

/* Aligned so that its first byte opens a 16-byte block (SEVurity plants a `ret` there). */
__attribute__((noinline, aligned(16))) void lockout(void)
{
    pin_state.locked = 1;
    barrier();
    printf("service: %d wrong PINs, locked\n", MAX_TRIES);
}

static uint32_t check_pin(uint32_t pin)
{
    uint32_t want;

    memcpy(&want, secret, sizeof(want));
    if (pin_state.locked)
        return ST_LOCKED;
    if (pin == want) {
        pin_state.attempts = 0;
        return ST_OK;
    }
    pin_state.attempts++;
    barrier();
    if (pin_state.attempts >= MAX_TRIES)
        lockout();
    return ST_WRONG;
}

/* A Montgomery-ladder-shaped loop: the swap decision is made without branches, but the
 * decision itself is stored in a 16-byte stack slot that is otherwise constant, as compilers
 * spill such values. CipherLeaks reads that slot's ciphertext at every exit. */
__attribute__((noinline)) static uint64_t ladder(void)
{
    uint64_t slot[2] __attribute__((aligned(16))); /* [0]: the swap bit, [1]: always 0 */
    uint64_t bits, r0 = 1, r1 = 3;

    memcpy(&bits, secret, sizeof(bits));
    slot[1] = 0;
    for (int i = -1; i < 64; i++) {
        /* Step -1 is the exponent's leading 1, as in RSA. */
        uint64_t b = i < 0 ? 1 : (bits >> (63 - i)) & 1;
        uint64_t mask = -b;
        uint64_t t = (r0 ^ r1) & mask;

        slot[0] = b;
        __asm__ volatile("" : : "r"(slot) : "memory"); /* the slot lives in memory */
        r0 ^= t;
        r1 ^= t;
        r1 = r0 * r1 + 7;
        r0 = r0 * r0 + 5;
        t = (r0 ^ r1) & mask;
        r0 ^= t;
        r1 ^= t;
        outb(PORT_STEP, (uint8_t)(i + 1));
    }
    return r0 ^ r1;
}

/* One of these per secret bit: each sits on its own 4 KiB code page, so the page the guest
 * fetches from next is the bit (the controlled channel). */
__attribute__((noinline, aligned(PAGE_SIZE))) uint64_t branch_one(uint64_t x)
{
    return x * 3 + 1;
}

__attribute__((noinline, aligned(PAGE_SIZE))) uint64_t branch_zero(uint64_t x)
{
    return x * 5 + 2;
}

__attribute__((noinline, aligned(PAGE_SIZE))) uint64_t branch_walk(void)
{
    uint64_t acc = 0;
    uint64_t bits;

    memcpy(&bits, secret, sizeof(bits));
    for (int i = 63; i >= 0; i--)
        acc = (bits >> i) & 1 ? branch_one(acc) : branch_zero(acc);
    return acc;
}

static void regs_exit(void)
{
    uint64_t word;

    memcpy(&word, secret, sizeof(word));
    __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"(PORT_REGS), "b"(word) : "memory");
}

static void serve(struct ring *ring, uint8_t *data)
{
    for (;;) {
        outb(PORT_DOORBELL, 0);
        uint32_t op = ring->op, arg = ring->arg;

        ring->status = ST_OK;
        ring->len = 0;
        ring->value = 0;
        switch (op) {
        case OP_READ_PAGE:
            if (arg >= PUBLIC_PAGES) {
                ring->status = ST_BAD;
                break;
            }
            memcpy(data, public_pages[arg], PAGE_SIZE);
            ring->len = PAGE_SIZE;
            break;
        case OP_CHECK_PIN:
            ring->status = check_pin(arg);
            ring->value = pin_state.attempts;
            break;
        case OP_LADDER:
            ring->value = ladder();
            break;
        case OP_BRANCH:
            ring->value = branch_walk();
            break;
        case OP_REGS:
            regs_exit();
            break;
        case OP_EXIT:
            return;
        default:
            ring->status = ST_BAD;
        }
        ring->op = OP_NONE;
    }
}

/* Fill `secret`: 0, or the exit status after a one-line error. Kept out of main so that main's
 * frame, and with it the stack under ladder(), stays what it was. */
__attribute__((noinline)) static int load_secret(const struct hv_boot_info *bi)
{
    struct hv_boot_info info = boot_info_read(bi);
    const uint8_t *got;
    size_t len;
    int rc;

    if (!boot_info_valid(&info)) {
        printf("service: bad boot information page\n");
        return 1;
    }
    rc = hv_secret(&info, &got, &len);
    if (rc == HV_SECRET_OK) {
        memcpy(secret, got, len < SECRET_LEN ? len : SECRET_LEN);
    } else if (rc == HV_SECRET_NONE || rc == HV_SECRET_BAD_GPA) {
        /* A secret_gpa other than 0x9000 is ignored, as it always was: the default secret. */
        memcpy(secret, DEFAULT_SECRET, SECRET_LEN);
    } else {
        printf("service: no secret: %s\n", hv_secret_reason());
        return EXIT_NO_SECRET;
    }
    return 0;
}

int main(const struct hv_boot_info *bi)
{
    /* The ring first, so that it is the first pages of the shared pool whatever else the guest
     * shares (a secret release takes pages of its own). */
    struct ring *ring = shared_alloc(2);
    int rc = load_secret(bi);

    if (rc != 0)
        return rc;
    if (config.debug_dump != 0 && debug_entry)
        hexdump_secret("debug dump");
    if (!ring) {
        printf("service: no shared memory\n");
        return 1;
    }
    memcpy(ring->marker, SHARED_MARKER, 16);
    outl(PORT_REGISTER, (uint32_t)(uintptr_t)ring);
    printf("service: ready\n");
    serve(ring, (uint8_t *)ring + PAGE_SIZE);
    printf("service: bye\n");
    return (int)ring->arg;
}
