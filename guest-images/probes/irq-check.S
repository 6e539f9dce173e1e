/* herd check-kvm guest: what a Linux kernel needs from KVM early on.
 * Entered like Linux (long mode, identity map, interrupts off) at 0x1000.
 * 1. lock cmpxchg16b (SLUB's cmpxchg_double), which some emulating
 *    hypervisors cannot handle;
 * 2. one PIT timer interrupt through an IDT gate, taken while running code.
 * Success: the handler writes 0x2a to port 0x80.
 * Build: as --64 irq-check.S -o x.o && objcopy -O binary -j .text x.o x.bin
 * The bytes are embedded in vmm/src/kvm_check.rs. */
    .code64
    .org 0
start:
    cli
    mov $0x3000, %rsi           /* 16-byte aligned scratch */
    xor %eax, %eax
    xor %edx, %edx
    xor %ebx, %ebx
    xor %ecx, %ecx
    lock cmpxchg16b (%rsi)
    /* IDT gate 0x20 at IDT_BASE + 0x20*16: handler, selector 0x08, present interrupt gate */
    lea handler(%rip), %rax
    mov $0x2200, %rdi           /* IDT base 0x2000 + 0x20*16 */
    mov %ax, (%rdi)
    movw $0x08, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    lidt idtr(%rip)
    mov $0x11, %al
    out %al, $0x20
    mov $0x20, %al
    out %al, $0x21
    mov $0x04, %al
    out %al, $0x21
    mov $0x01, %al
    out %al, $0x21
    mov $0xfe, %al
    out %al, $0x21
    mov $0x34, %al
    out %al, $0x43
    mov $0x00, %al
    out %al, $0x40
    mov $0x10, %al
    out %al, $0x40
    sti
1:  pause
    jmp 1b
handler:
    mov $0x2a, %al
    out %al, $0x80
    jmp handler
    .align 8
idtr:
    .word 0x0fff
    .quad 0x2000
