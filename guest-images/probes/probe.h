/* Shared by the asm entry stubs and the C core. */
#ifndef PROBE_H
#define PROBE_H

#define PROBE_ENTRY_LINUX64 0
#define PROBE_ENTRY_PVH     1
#define PROBE_STACK_SIZE    16384

#endif
