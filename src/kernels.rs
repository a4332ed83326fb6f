//! PTX of the CUDA kernels in `cuda/`, compiled by build.rs (empty strings when `KERNELS_BUILT` is false).
//! Entry points, launch shapes and preconditions are listed in `cuda/KERNELS.md`.
include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
