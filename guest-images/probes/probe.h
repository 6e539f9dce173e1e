/* Shared by the asm entry stubs and the C core. */
#ifndef PROBE_H
#define PROBE_H

#define PROBE_ENTRY_LINUX64 0
#define PROBE_ENTRY_PVH     1
#define PROBE_STACK_SIZE    16384
/* COM1's data port, and the first byte of "probe: hello", which the entry
 * stubs write before anything else (see probe_main). */
#define PROBE_COM1          0x3f8
#define PROBE_FIRST_BYTE    'p'

#ifndef __ASSEMBLER__
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* What core.c offers the device drivers (virtio*.c). */
void *memset(void *d, int c, unsigned long n);
void *memcpy(void *d, const void *s, unsigned long n);
void puts(const char *s);
void put_u64(u64 v);
void put_hex(u64 v);
void __attribute__((noreturn)) spin(void);
void __attribute__((noreturn)) exit_vm(u8 code);
extern char cmdline[];
const char *cmdline_get(const char *key);
long long parse_num(const char *s);
int word_is(const char *s, const char *w);
/* The MMIO hole (virtio windows) is mapped only once the core's own page
 * tables are in; probe.quick=1 skips them. 0 if mapped. */
int probe_map_mmio(void);

/* virtio.c: runs probe.action=blk/net/... and never returns, or returns
 * if `action` is not one of its actions. */
void virtio_action(const char *action);
/* platform.c: probe.action=acpi-poweroff/acpi-reset/acpi-garbage/cmos;
 * returns if `action` is none of them. */
void platform_action(const char *action);
/* hostile.c: misbehaving-guest actions (outsb, serial-flood, ...);
 * returns if `action` is none of them. */
void hostile_action(const char *action);
#endif

#endif
