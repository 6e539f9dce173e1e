/*
 * Entry for probe-linux64.elf: the Linux 64-bit boot protocol.
 * herd enters here in long mode with the first 1 GiB identity mapped,
 * interrupts off and %rsi = struct boot_params (the zero page).
 * We do as little as possible in asm: zero .bss, switch to our own stack
 * (herd's is at 0x8ff0, inside RAM the probe later writes to) and hand
 * over to the shared C core.
 */
#include "probe.h"

    .section .text.entry, "ax"
    .code64
    .globl linux64_start
linux64_start:
    cli
    cld
    /* The first byte of "probe: hello", before the .bss clear: emulated
     * guest code is ~100x slow on some hosts and the clear would then be
     * most of a benchmark's spawn -> first byte, the same under any VMM. */
    mov     $PROBE_COM1, %dx
    mov     $PROBE_FIRST_BYTE, %al
    outb    %al, %dx
    mov     %rsi, %r12              /* boot_params, kept across the .bss clear */
    mov     $__bss_start, %edi
    mov     $__bss_end, %ecx
    sub     %edi, %ecx
    shr     $3, %ecx                /* .bss is 8-byte aligned at both ends */
    xor     %eax, %eax
    rep stosq
    mov     $probe_stack_top, %esp  /* linked below 4 GiB, zero-extends */
    mov     $PROBE_ENTRY_LINUX64, %edi
    mov     %r12, %rsi
    call    probe_main
    /* probe_main never returns; if it does, park the vCPU. */
1:  pause
    jmp     1b

    .section .noinit, "aw", @nobits
    .balign 16
    .space  PROBE_STACK_SIZE
    .globl  probe_stack_top
probe_stack_top:
