/* Output to the 16550 UART (COM1) and a small printf.
 *
 * Conversions: %s %c %d %i %u %x %X %p %%, length modifiers l, ll and z, flags '-' and '0',
 * a field width and, for %s, a precision (both may be '*'). %p prints 0x and lowercase hex. */
#ifndef HV_GUEST_PRINTF_H
#define HV_GUEST_PRINTF_H

#include <stdarg.h>
#include <stddef.h>

void serial_putc(char c);
void serial_write(const char *s, size_t n);
void serial_puts(const char *s); /* no newline added */

int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

#endif
