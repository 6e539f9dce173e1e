/*
 * Entry for probe-pvh.elf: the Xen PVH boot protocol.
 * herd (like QEMU and Firecracker) finds XEN_ELFNOTE_PHYS32_ENTRY below and
 * enters pvh_start in 32-bit protected mode, paging off, flat segments,
 * interrupts off, %ebx = struct hvm_start_info.
 *
 * The C core is 64-bit and must reach RAM above 4 GiB, so we switch to long
 * mode here with a minimal identity map of the first 1 GiB (2 MiB pages):
 * that is exactly the state the Linux 64-bit protocol hands over, so both
 * probes reach probe_main in the same state and the core builds the full
 * page tables itself.
 */
#include "probe.h"

#define MSR_EFER        0xc0000080
#define EFER_LME        (1 << 8)
#define CR0_PE          (1 << 0)
#define CR0_PG          (1 << 31)
#define CR4_PAE         (1 << 5)
#define PTE_P_W         0x003
#define PTE_P_W_PS      0x083

/* The note: name "Xen", type 18, desc = entry point.  The desc is a .quad
 * like the one in an x86_64 vmlinux, which is what herd must accept anyway;
 * loaders read its low 32 bits. */
    .section .note.Xen, "a", @note
    .balign 4
    .long   4                       /* namesz */
    .long   8                       /* descsz */
    .long   18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz  "Xen"
    .balign 4
    .quad   pvh_start
    .balign 4

    .section .text.entry, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    /* The first byte of "probe: hello" (entry-linux64.S says why). */
    mov     $PROBE_COM1, %dx
    mov     $PROBE_FIRST_BYTE, %al
    outb    %al, %dx
    cld
    mov     %ebx, %ebp              /* hvm_start_info, survives rep stos */

    mov     $__bss_start, %edi
    mov     $__bss_end, %ecx
    sub     %edi, %ecx
    shr     $2, %ecx
    xor     %eax, %eax
    rep stosl                       /* boot tables below live in .bss: now zero */

    /* PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] = i * 2 MiB (first 1 GiB). */
    movl    $(pvh_pdpt + PTE_P_W), pvh_pml4
    movl    $(pvh_pd + PTE_P_W), pvh_pdpt
    mov     $pvh_pd, %edi
    mov     $PTE_P_W_PS, %eax
    mov     $512, %ecx
1:  mov     %eax, (%edi)            /* high dword already zero */
    add     $0x200000, %eax
    add     $8, %edi
    loop    1b

    lgdt    pvh_gdt_desc
    mov     %cr4, %eax
    or      $CR4_PAE, %eax
    mov     %eax, %cr4
    mov     $pvh_pml4, %eax
    mov     %eax, %cr3
    mov     $MSR_EFER, %ecx
    rdmsr
    or      $EFER_LME, %eax
    wrmsr
    mov     %cr0, %eax
    or      $(CR0_PG | CR0_PE), %eax
    mov     %eax, %cr0
    ljmp    $0x08, $pvh_long

    .code64
pvh_long:
    mov     $0x10, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    mov     %eax, %fs
    mov     %eax, %gs
    mov     $probe_stack_top, %esp
    mov     %ebp, %esi              /* 32-bit mov: upper halves are undefined after the switch */
    mov     $PROBE_ENTRY_PVH, %edi
    call    probe_main
1:  pause
    jmp     1b

    .section .rodata
    .balign 8
pvh_gdt:
    .quad   0                       /* null */
    .quad   0x00af9a000000ffff      /* 0x08: 64-bit code, DPL 0 */
    .quad   0x00cf92000000ffff      /* 0x10: flat data */
pvh_gdt_end:
pvh_gdt_desc:
    .word   pvh_gdt_end - pvh_gdt - 1
    .long   pvh_gdt

    .section .bss
    .balign 4096
pvh_pml4: .space 4096
pvh_pdpt: .space 4096
pvh_pd:   .space 4096

    .section .noinit, "aw", @nobits
    .balign 16
    .space  PROBE_STACK_SIZE
    .globl  probe_stack_top
probe_stack_top:
