//! Parity of the correlation decoder's CUDA kernels (kernels/baseline.cu) with the CPU
//! reference: z-maps bit for bit (exact counts, the same f64 formula), r within 1e-6. Skips
//! where there is no CUDA device (`NICLIP_REQUIRE_GPU=1` makes that a failure).

mod common;

use niclip::baseline::cuda::{correlate_cuda, z_maps_cuda};
use niclip::baseline::neurosynth::{active_totals, correlate, standardize_rows, z_maps};
use niclip::rng::SplitMix64;

/// Random sparse MA maps and term selections, seeded.
fn problem() -> (Vec<Vec<u32>>, Vec<Vec<u32>>, usize) {
    let mut rng = SplitMix64(0x2545_F491_4F6C_DD1D);
    let mut next = move |n: u64| rng.below(n as usize) as u64;
    let (n_studies, n_vox, n_terms) = (300usize, 5000usize, 40usize);
    let ma: Vec<Vec<u32>> = (0..n_studies)
        .map(|_| {
            let start = next(n_vox as u64 - 600) as u32;
            let mut v: Vec<u32> = (0..next(500) as u32).map(|k| start + k).collect();
            v.dedup();
            v
        })
        .collect();
    let sel: Vec<Vec<u32>> = (0..n_terms)
        .map(|t| {
            let p = 1 + (t as u64 * 7) % 97; // from rare to most studies
            (0..n_studies as u32)
                .filter(|_| next(100) < p)
                .collect::<Vec<_>>()
        })
        .filter(|s: &Vec<u32>| !s.is_empty() && s.len() < n_studies)
        .collect();
    (ma, sel, n_vox)
}

#[test]
fn z_maps_on_the_device_equal_the_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let (ma, sel, nv) = problem();
    let total = active_totals(&ma, nv);
    let cpu = z_maps(&ma, &total, &sel, nv);
    let dev = z_maps_cuda(&g, &ma, &total, &sel, nv).unwrap();
    assert_eq!(cpu, dev);
}

#[test]
fn decoding_on_the_device_equals_the_cpu() {
    let Some(g) = common::need_gpu() else { return };
    let (ma, sel, nv) = problem();
    let total = active_totals(&ma, nv);
    let rows = standardize_rows(&z_maps(&ma, &total, &sel, nv), nv);
    let map: Vec<f32> = (0..nv)
        .map(|v| ((v * 37) % 101) as f32 / 10.0 - 5.0)
        .collect();
    let cpu = correlate(&rows, nv, &map);
    let dev = correlate_cuda(&g, &rows, nv, &map).unwrap();
    let err = cpu
        .iter()
        .zip(&dev)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-6, "max |Δr| = {err}");
}
