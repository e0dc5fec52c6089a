// An XLA FFI handler that returns its output buffer as XLA allocated it, without writing it.
//
// jnp.zeros would do, but on CPU it costs a full write of the buffer: for a Switch layer's stacked
// expert-weight gradients (128 experts x 2 x 1 MiB) that memset is about a tenth of the layer's
// backward pass. Every caller (switchrepro/backends/cpu/expert_loop.py) overwrites each element before reading it.
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static ffi::Error Uninitialized(ffi::Result<ffi::AnyBuffer>) { return ffi::Error::Success(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(SwitchreproUninitialized, Uninitialized, ffi::Ffi::Bind().Ret<ffi::AnyBuffer>());
