//! PTX of the CUDA kernels in `cuda/`, compiled by build.rs (empty strings when `KERNELS_BUILT` is false).
//! Entry points, launch shapes and preconditions are listed in `cuda/KERNELS.md`.
include!(concat!(env!("OUT_DIR"), "/ptx.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of the `.entry` kernels in a PTX module.
    fn entries(ptx: &str) -> Vec<&str> {
        ptx.lines()
            .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
            .map(|l| l.split('(').next().unwrap_or("").trim())
            .collect()
    }

    #[test]
    fn every_kernel_is_built_and_documented() {
        if !KERNELS_BUILT {
            assert!(ALL.iter().all(|(_, ptx)| ptx.is_empty()));
            return;
        }
        let doc = include_str!("../cuda/KERNELS.md");
        for (stem, ptx) in ALL {
            let names = entries(ptx);
            assert!(!names.is_empty(), "cuda/{stem}.cu has no kernels");
            assert!(ptx.contains(&format!(".target sm_{}", &PTX_ARCH["compute_".len()..])));
            for name in names {
                assert!(name.starts_with("fasp_"), "{stem}: {name} lacks the fasp_ prefix");
                let documented = doc.contains(&format!("`{name}`"))
                    || name.strip_suffix("_bf16").is_some_and(|base| doc.contains(&format!("`{base}_f32` / `_bf16`")));
                assert!(documented, "{name} (cuda/{stem}.cu) is missing from cuda/KERNELS.md");
            }
        }
    }
}
