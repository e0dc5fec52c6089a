"""CPU-only speed paths: the allocator setting, the expert loop, the native kernels."""
