#include "heap.h"
#include "mem.h"

static uintptr_t heap_next;
static uintptr_t heap_limit;

void heap_init(uintptr_t start, uintptr_t limit)
{
    heap_next = start;
    heap_limit = limit > start ? limit : start;
}

void *heap_alloc(size_t size, size_t align)
{
    if (align == 0 || (align & (align - 1)))
        return NULL;

    uintptr_t p = (heap_next + align - 1) & ~(uintptr_t)(align - 1);

    /* Written so that no sum can wrap, whatever mem_size the hypervisor claimed. */
    if (p < heap_next || p > heap_limit || size > heap_limit - p)
        return NULL;
    heap_next = p + size;
    return memset((void *)p, 0, size);
}

void *malloc(size_t size)
{
    return heap_alloc(size, 16);
}

size_t heap_free_bytes(void)
{
    return heap_limit - heap_next;
}
