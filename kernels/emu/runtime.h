// The emulated execution model's entry points for the fake driver (driver.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda_emu.h"

namespace niclip_emu {
// Runs kernel `k` over `grid` blocks of `block` threads; null, or why it failed.
const char* launch(const Kernel* k, uint3 grid, uint3 block, size_t shared_bytes, void** params);
// The first check a kernel failed in the last launch (empty if none).
const char* last_error_text();
void fail(const char* fmt, ...);
// Set when a check failed in a way the kernel cannot go on from (divergent barriers, a
// timeout): every barrier and shuffle then returns at once, so the threads run to their end.
extern std::atomic<bool> g_abort;
// block.cpp: the block being run.
int current_tid();
bool run_block(const Kernel* k, void** params, int threads, unsigned char* shared);
bool drain_block();
void release_block();
// Device memory: host memory ending at a guard page.
void* device_alloc(size_t bytes);
bool device_free(void* p);
// Whether [p, p + bytes) lies inside one allocation.
bool device_range(uintptr_t p, size_t bytes);
void install_fault_handler();
// The kernel table, filled by each family's niclip_emu::Family at load.
const Kernel* find_kernel(const char* name);
bool family_kernels(const std::string& family, const Kernel** out, int* count);
}  // namespace niclip_emu
