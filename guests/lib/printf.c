#include <stdint.h>

#include "bootinfo.h"
#include "printf.h"
#include "x86.h"

#define UART_THR 0 /* transmit holding register */
#define UART_LSR 5 /* line status register */
#define UART_LSR_THRE 0x20

void serial_putc(char c)
{
    /* Wait for an empty transmitter as a driver for real hardware does, but never forever:
     * hv reports it empty at once, and a missing UART reads all ones. */
    for (int spins = 0; spins < 1000; spins++) {
        if (inb(HV_PORT_COM1 + UART_LSR) & UART_LSR_THRE)
            break;
        cpu_relax();
    }
    outb(HV_PORT_COM1 + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        serial_putc(s[i]);
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

/* Where formatted characters go: the UART, or a bounded buffer for snprintf. */
struct sink {
    int uart;    /* 1: the UART, 0: buf */
    char *buf;
    size_t size; /* buffer capacity including the final NUL */
    size_t len;  /* characters produced so far (also those that did not fit) */
};

static void sink_put(struct sink *s, char c)
{
    if (s->uart)
        serial_putc(c);
    else if (s->len + 1 < s->size)
        s->buf[s->len] = c;
    s->len++;
}

static void sink_pad(struct sink *s, char c, int n)
{
    while (n-- > 0)
        sink_put(s, c);
}

/* Emit digits (already in reverse order) with prefix, width and padding applied. */
static void emit_number(struct sink *s, const char *rev, int ndigits, const char *prefix,
                        int width, int zero, int left)
{
    int plen = 0;

    while (prefix[plen])
        plen++;
    int pad = width - ndigits - plen;

    if (!left && !zero)
        sink_pad(s, ' ', pad);
    for (int i = 0; i < plen; i++)
        sink_put(s, prefix[i]);
    if (!left && zero)
        sink_pad(s, '0', pad);
    while (ndigits-- > 0)
        sink_put(s, rev[ndigits]);
    if (left)
        sink_pad(s, ' ', pad);
}

static void format_unsigned(struct sink *s, uint64_t v, unsigned base, int upper,
                            const char *prefix, int width, int zero, int left)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char rev[24];
    int n = 0;

    do {
        rev[n++] = digits[v % base];
        v /= base;
    } while (v);
    emit_number(s, rev, n, prefix, width, zero, left);
}

static int format(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            sink_put(s, *fmt);
            continue;
        }
        fmt++;

        int left = 0, zero = 0, width = 0, prec = -1, lng = 0;

        for (;; fmt++) {
            if (*fmt == '-')
                left = 1;
            else if (*fmt == '0')
                zero = 1;
            else
                break;
        }
        if (*fmt == '*') {
            width = va_arg(ap, int);
            if (width < 0) {
                left = 1;
                width = -width;
            }
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                width = width * 10 + (*fmt++ - '0');
        }
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            } else {
                while (*fmt >= '0' && *fmt <= '9')
                    prec = prec * 10 + (*fmt++ - '0');
            }
        }
        while (*fmt == 'l' || *fmt == 'z') {
            lng++;
            fmt++;
        }

        switch (*fmt) {
        case 'd':
        case 'i': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            uint64_t mag = v < 0 ? -(uint64_t)v : (uint64_t)v;

            format_unsigned(s, mag, 10, 0, v < 0 ? "-" : "", width, zero, left);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);

            format_unsigned(s, v, *fmt == 'u' ? 10 : 16, *fmt == 'X', "", width, zero, left);
            break;
        }
        case 'p':
            format_unsigned(s, (uintptr_t)va_arg(ap, void *), 16, 0, "0x", width, zero, left);
            break;
        case 'c': {
            char c = (char)va_arg(ap, int);

            if (!left)
                sink_pad(s, ' ', width - 1);
            sink_put(s, c);
            if (left)
                sink_pad(s, ' ', width - 1);
            break;
        }
        case 's': {
            const char *str = va_arg(ap, const char *);
            int n = 0;

            if (!str)
                str = "(null)";
            while (str[n] && (prec < 0 || n < prec))
                n++;
            if (!left)
                sink_pad(s, ' ', width - n);
            for (int i = 0; i < n; i++)
                sink_put(s, str[i]);
            if (left)
                sink_pad(s, ' ', width - n);
            break;
        }
        case '%':
            sink_put(s, '%');
            break;
        case '\0':
            /* A lone '%' at the end of the format. */
            return (int)s->len;
        default:
            /* Unknown conversion: show it rather than guess at its arguments. */
            sink_put(s, '%');
            sink_put(s, *fmt);
            break;
        }
    }
    return (int)s->len;
}

int vprintf(const char *fmt, va_list ap)
{
    struct sink s = { 1, 0, 0, 0 };

    return format(&s, fmt, ap);
}

int printf(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink s = { 0, buf, size, 0 };
    int n = format(&s, fmt, ap);

    if (size)
        buf[s.len < size ? s.len : size - 1] = '\0';
    return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
