/*
 * layout.c - the x86-64 layout of every public struct, field by field, and
 * the value of every public constant, against layout_table.h. Prints each
 * entry (the table is the report) and every mismatch with both numbers.
 * header_check.c asserts the same table at compile time in every language
 * mode; this program says which entry moved.
 */
#include <hashattn/hashattn.h>

#include <stdio.h>

#include "layout_table.h"

#define ALIGNOF(T) _Alignof(T)

static int failures, checked;

static void check(const char *what, size_t got, size_t want)
{
    checked++;
    if (got != want) {
        failures++;
        printf("  MISMATCH %-58s %4zu, pinned %4zu\n", what, got, want);
    } else {
        printf("  %-67s %4zu\n", what, got);
    }
}

#define L_S(T, size, align)                              \
    check("sizeof(" #T ")", sizeof(T), (size));          \
    check("alignof(" #T ")", ALIGNOF(T), (align));
#define L_F(T, f, off, size)                             \
    check("offsetof(" #T ", " #f ")", offsetof(T, f), (off)); \
    check("sizeof(" #T "." #f ")", sizeof(((T *)0)->f), (size));
#define L_V(name, value) check(#name, (size_t)(name), (size_t)(value));

int main(void)
{
#if defined(__x86_64__)
    HA_LAYOUT_TABLE(L_S, L_F)
#else
    printf("  layout table: pinned for x86-64 only; checking constants\n");
#endif
    HA_CONSTANT_TABLE(L_V)
    printf("abi layout: %d entries, %d mismatches %s\n", checked, failures, failures ? "FAILED" : "OK");
    return failures ? 1 : 0;
}
