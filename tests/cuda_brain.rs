//! Parity of the CUDA brain-space pipeline (kernels/mkda.cu via src/brain/features_cuda.rs) with
//! the CPU reference (`ma_xty_cpu`, `image_features_cpu`): Xᵀy within relative 1e-6, features
//! within relative 1e-5. GPU tests skip where there is no CUDA device (`NICLIP_REQUIRE_GPU=1`
//! fails them); the NVRTC test needs only libnvrtc, and the emulation tests run everywhere.

mod common;

use common::{need_data, need_file, need_gpu, need_nvrtc};
use niclip::brain::features::{image_features_cpu, ma_xty_cpu};
use niclip::brain::features_cuda::{
    image_features_cuda, ma_xty_cuda, ma_xty_emulated, Accumulate, CudaMkda, Solver,
};
use niclip::brain::kernels::{AleKernel, AleWidth, MaKernel};
use niclip::brain::mkda::{MkdaKernel, Rounding};
use niclip::brain::{Atlas, Grid, Image, Mask, Peaks};
use niclip::device::cuda::{self, Gpu};
use niclip::rng::SplitMix64;
use std::path::Path;

/// Uniform in [lo, hi).
fn range(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

/// `k` Gaussian blobs (σ 2–6 voxels, cut below 1e-3) centred on random in-mask voxels; map 0
/// is signed (a blob minus another), so Xᵀy also sums weights of both signs.
fn blob_atlas(mask: &Mask, k: usize, seed: u64) -> Atlas {
    let grid = &mask.grid;
    let n = grid.n_voxels();
    let [nx, ny, nz] = grid.shape;
    let mut rng = SplitMix64(seed);
    let mut data = vec![0.0f32; n * k];
    let blob = |data: &mut [f32], sign: f32, rng: &mut SplitMix64| {
        let c = grid.unflat(mask.voxels[rng.below(mask.len())] as usize);
        let sigma = range(rng, 2.0, 6.0);
        let r = (3.7 * sigma).ceil() as isize;
        for k in (c[2] as isize - r).max(0)..(c[2] as isize + r + 1).min(nz as isize) {
            for j in (c[1] as isize - r).max(0)..(c[1] as isize + r + 1).min(ny as isize) {
                for i in (c[0] as isize - r).max(0)..(c[0] as isize + r + 1).min(nx as isize) {
                    let d2 = [i - c[0] as isize, j - c[1] as isize, k - c[2] as isize]
                        .iter()
                        .map(|&d| (d * d) as f64)
                        .sum::<f64>();
                    let v = (-d2 / (2.0 * sigma * sigma)).exp();
                    if v >= 1e-3 {
                        data[grid.flat(i as usize, j as usize, k as usize)] += sign * v as f32;
                    }
                }
            }
        }
    };
    for (m, vol) in data.chunks_mut(n).enumerate() {
        blob(vol, 1.0, &mut rng);
        if m == 0 {
            blob(vol, -0.5, &mut rng);
        }
    }
    Atlas::from_maps(
        &Image::new(grid.clone(), k, data),
        Path::new("<blob atlas>"),
    )
    .unwrap()
}

/// Studies that stress the union and the bounds: empty studies, duplicate peaks, peaks on
/// rounding ties, near and beyond every face of the volume, far away, and one study of more
/// peaks than the kernel caches in shared memory.
fn synthetic_peaks(grid: &Grid, n: usize, seed: u64) -> Peaks {
    let mut rng = SplitMix64(seed);
    let corner = |ijk: [f64; 3]| grid.voxel_to_mm(ijk);
    let [nx, ny, nz] = grid.shape.map(|s| s as f64);
    let mut peaks = Peaks::new();
    for s in 0..n {
        let np = match s % 10 {
            0 => 0,
            1 => 1,
            9 => 40 + rng.below(40),
            _ => rng.below(25),
        };
        let mut xyz: Vec<[f64; 3]> = Vec::with_capacity(np);
        for _ in 0..np {
            let p = match rng.below(8) {
                // Duplicate of an earlier peak of this study.
                0 if !xyz.is_empty() => xyz[rng.below(xyz.len())],
                // Just inside, on or just beyond a face (voxel coordinate −6 … 5 from an edge).
                1 => {
                    let mut v = [
                        range(&mut rng, 0.0, nx),
                        range(&mut rng, 0.0, ny),
                        range(&mut rng, 0.0, nz),
                    ];
                    let a = rng.below(3);
                    let lim = [nx, ny, nz][a];
                    v[a] = if rng.below(2) == 0 {
                        range(&mut rng, -6.0, 5.0)
                    } else {
                        lim - 1.0 + range(&mut rng, -5.0, 6.0)
                    };
                    corner(v)
                }
                // Far outside.
                2 => [range(&mut rng, -1e5, 1e5), 300.0, -4e3],
                // A rounding tie (half-voxel in mm on a 2 mm grid: odd mm).
                3 => {
                    let v = corner([
                        rng.below(nx as usize) as f64,
                        rng.below(ny as usize) as f64,
                        rng.below(nz as usize) as f64,
                    ]);
                    [v[0] + 1.0, v[1] - 1.0, v[2] + 1.0]
                }
                // Near an earlier peak (overlapping spheres).
                4 if !xyz.is_empty() => {
                    let q = xyz[rng.below(xyz.len())];
                    [
                        q[0] + range(&mut rng, -12.0, 12.0),
                        q[1] + range(&mut rng, -12.0, 12.0),
                        q[2] + range(&mut rng, -12.0, 12.0),
                    ]
                }
                _ => corner([
                    range(&mut rng, 0.0, nx),
                    range(&mut rng, 0.0, ny),
                    range(&mut rng, 0.0, nz),
                ]),
            };
            xyz.push(p);
        }
        peaks.push(format!("syn{s}"), xyz);
    }
    // More peaks than MKDA_PEAK_CACHE (512), many overlapping: read from global memory.
    let mut big = Vec::new();
    for _ in 0..700 {
        big.push(corner([
            range(&mut rng, 0.3 * nx, 0.7 * nx),
            range(&mut rng, 0.3 * ny, 0.7 * ny),
            range(&mut rng, 0.3 * nz, 0.7 * nz),
        ]));
    }
    peaks.push("big", big);
    peaks.push("empty-last", Vec::new());
    peaks
}

/// The first `max_studies` studies of Neurosynth's coordinates table, in file order.
fn neurosynth_peaks(path: &Path, max_studies: usize) -> Peaks {
    let f = std::fs::File::open(path).unwrap();
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .from_reader(flate2::read::MultiGzDecoder::new(f));
    let head = rdr.headers().unwrap().clone();
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();
    let (ci, cx, cy, cz) = (col("id"), col("x"), col("y"), col("z"));
    let mut peaks = Peaks::new();
    let mut cur: Option<(String, Vec<[f64; 3]>)> = None;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let id = rec[ci].to_string();
        let p = [cx, cy, cz].map(|c| rec[c].parse::<f64>().unwrap());
        match &mut cur {
            Some((cid, xyz)) if *cid == id => xyz.push(p),
            _ => {
                if let Some((cid, xyz)) = cur.take() {
                    peaks.push(cid, xyz);
                    if peaks.len() == max_studies {
                        return peaks;
                    }
                }
                cur = Some((id, vec![p]));
            }
        }
    }
    if let Some((cid, xyz)) = cur {
        peaks.push(cid, xyz);
    }
    peaks
}

/// |gpu − cpu| ≤ rel·|cpu| + floor·(largest |cpu| of the row), and nothing non-finite.
fn assert_close<T: Copy + Into<f64>>(
    what: &str,
    gpu: &[T],
    cpu: &[T],
    k: usize,
    rel: f64,
    floor: f64,
) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut worst = 0.0f64;
    for (s, (g, c)) in gpu.chunks(k).zip(cpu.chunks(k)).enumerate() {
        let scale = c.iter().map(|&x| x.into().abs()).fold(0.0, f64::max);
        for (j, (&g, &c)) in g.iter().zip(c).enumerate() {
            let (g, c): (f64, f64) = (g.into(), c.into());
            let err = (g - c).abs();
            assert!(
                g.is_finite() && err <= rel * c.abs() + floor * scale,
                "{what}: study {s}, map {j}: gpu {g:e} vs cpu {c:e} (row scale {scale:e})"
            );
            if c != 0.0 {
                worst = worst.max(err / c.abs());
            }
        }
    }
    eprintln!("{what}: worst relative error {worst:.2e}");
}

/// Every accumulation and solver against the CPU, on output buffers poisoned with NaN.
fn check_all_paths(
    gpu: &Gpu,
    kernel: &MaKernel,
    mask: &Mask,
    atlas: &Atlas,
    peaks: &Peaks,
    label: &str,
) {
    let t = std::time::Instant::now();
    let xty_cpu = ma_xty_cpu(kernel, mask, atlas, peaks).unwrap();
    let feat_cpu = image_features_cpu(kernel, mask, atlas, peaks).unwrap();
    eprintln!(
        "{label}: cpu {:.3} s for {} studies",
        t.elapsed().as_secs_f64(),
        peaks.len()
    );
    let k = atlas.k;
    let n = peaks.len();
    let dev = CudaMkda::new(gpu, kernel, mask, atlas).unwrap();
    let mut solvers = vec![Solver::Kernel];
    if cuda::cublas_available() {
        solvers.push(Solver::Cublas);
    } else {
        eprintln!("{label}: libcublas not loadable, cuBLAS solve not tested");
    }
    for acc in [Accumulate::Shared, Accumulate::Global] {
        let mut xty = gpu.htod(&vec![f64::NAN; n * k]).unwrap();
        let t = std::time::Instant::now();
        let used = dev.xty_into(peaks, acc, &mut xty).unwrap();
        gpu.sync().unwrap();
        eprintln!("{label}: xty {used:?} {:.4} s", t.elapsed().as_secs_f64());
        assert_eq!(used, acc);
        let got = gpu.dtoh(&xty, n * k).unwrap();
        assert_close(
            &format!("{label} xty {acc:?}"),
            &got,
            &xty_cpu,
            k,
            1e-6,
            1e-12,
        );
        for &solver in &solvers {
            let mut beta = gpu.htod(&vec![f32::NAN; n * k]).unwrap();
            let used = dev.solve_into(&xty, n, solver, &mut beta).unwrap();
            assert_eq!(used, solver);
            let got = gpu.dtoh(&beta, n * k).unwrap();
            assert_close(
                &format!("{label} features {acc:?}/{solver:?}"),
                &got,
                &feat_cpu,
                k,
                1e-5,
                1e-7,
            );
        }
    }
    // The plain entry points (Auto everywhere).
    let xty = ma_xty_cuda(gpu, kernel, mask, atlas, peaks).unwrap();
    assert_close(
        &format!("{label} ma_xty_cuda"),
        &xty,
        &xty_cpu,
        k,
        1e-6,
        1e-12,
    );
    let feat = image_features_cuda(gpu, kernel, mask, atlas, peaks).unwrap();
    assert_close(
        &format!("{label} image_features_cuda"),
        &feat,
        &feat_cpu,
        k,
        1e-5,
        1e-7,
    );
}

/// A small volume whose mask is every voxel, so the faces of the volume are in the mask and
/// spheres cut by them count: the bounds and the clamping of far peaks are visible.
fn full_box() -> Mask {
    let grid = Grid::new(
        [23, 19, 17],
        [
            [2.0, 0.0, 0.0, -20.0],
            [0.0, 2.0, 0.0, -18.0],
            [0.0, 0.0, 2.0, -16.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
    );
    Mask::from_values(grid.clone(), &vec![1.0; grid.n_voxels()])
}

/// The first `few - 2` studies and the last two (the 700-peak study read from global memory).
fn subset(peaks: &Peaks, few: usize) -> Peaks {
    let n = peaks.len();
    if few >= n {
        return peaks.clone();
    }
    let mut out = Peaks::new();
    for s in (0..few - 2).chain(n - 2..n) {
        out.push(peaks.ids[s].clone(), peaks.study(s).iter().copied());
    }
    out
}

/// MKDA spheres, then KDA and ALE (one Gaussian, and one per study from sample sizes), each
/// with the number of studies to run it on (KDA and ALE on `subset(peaks, few)`: the ALE owner
/// test reads every other peak, slow on the emulated GPU).
fn kernels(grid: &Grid, n: usize) -> Vec<(MaKernel, &'static str, usize)> {
    let few = n.min(60);
    let sizes: Vec<f64> = (0..few).map(|s| (10 + (s * 7) % 50) as f64).collect();
    let mkda = |r, rounding| MkdaKernel::for_grid(grid, r, rounding);
    vec![
        (MaKernel::Mkda(mkda(10.0, Rounding::Round)), "r10/round", n),
        // 7 mm on 2 mm voxels: an asymmetric cube (−4…3), NiMARE's slicing.
        (MaKernel::Mkda(mkda(7.0, Rounding::Trunc)), "r7/trunc", n),
        (MaKernel::Kda(mkda(10.0, Rounding::Round)), "kda r10", few),
        (
            MaKernel::Ale(AleKernel::new(AleWidth::Fwhm(10.0), grid, Rounding::Round).unwrap()),
            "ale fwhm10",
            few,
        ),
        (
            MaKernel::Ale(AleKernel::per_study(&sizes, grid, Rounding::Round).unwrap()),
            "ale per-study n",
            few,
        ),
    ]
}

#[test]
fn synthetic_studies_match_cpu() {
    let Some(gpu) = need_gpu() else { return };
    let mask = Mask::mni152_2mm();
    let atlas = blob_atlas(&mask, 40, 7);
    let peaks = synthetic_peaks(&mask.grid, 300, 11);
    for (kernel, name, n) in kernels(&mask.grid, peaks.len()) {
        check_all_paths(
            &gpu,
            &kernel,
            &mask,
            &atlas,
            &subset(&peaks, n),
            &format!("synthetic {name}"),
        );
    }
    let boxed = full_box();
    let atlas = blob_atlas(&boxed, 6, 17);
    let peaks = synthetic_peaks(&boxed.grid, 200, 19);
    for (kernel, name, n) in kernels(&boxed.grid, peaks.len()) {
        check_all_paths(
            &gpu,
            &kernel,
            &boxed,
            &atlas,
            &subset(&peaks, n),
            &format!("full box {name}"),
        );
    }
}

#[test]
fn label_atlas_matches_cpu() {
    let Some(gpu) = need_gpu() else { return };
    let mask = Mask::mni152_2mm();
    // A label atlas (one non-zero per row): slabs of 6 voxels along y, 18 labels.
    let grid = mask.grid.clone();
    let labels: Vec<f32> = (0..grid.n_voxels())
        .map(|v| {
            let [_, j, _] = grid.unflat(v);
            if mask.index[v] >= 0 || j % 3 == 0 {
                (j / 6 + 1) as f32
            } else {
                0.0
            }
        })
        .collect();
    let atlas = Atlas::from_labels(&Image::new(grid, 1, labels), Path::new("<slabs>")).unwrap();
    let peaks = synthetic_peaks(&mask.grid, 120, 5);
    let kernel = MaKernel::Mkda(MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round));
    check_all_paths(&gpu, &kernel, &mask, &atlas, &peaks, "labels");
}

#[test]
fn neurosynth_peaks_match_cpu() {
    let Some(gpu) = need_gpu() else { return };
    let Some(data) = need_data() else {
        return;
    };
    let Some(path) =
        need_file(data.join("corpus/neurosynth/data-neurosynth_version-7_coordinates.tsv.gz"))
    else {
        return;
    };
    let mask = Mask::mni152_2mm();
    let peaks = neurosynth_peaks(&path, 500);
    assert!(peaks.len() > 100, "read {} studies", peaks.len());
    let kernel = MaKernel::Mkda(MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round));
    check_all_paths(
        &gpu,
        &kernel,
        &mask,
        &blob_atlas(&mask, 40, 3),
        &peaks,
        "neurosynth/blobs",
    );
    if let Some(aal) = need_file(data.join("atlases/aal3/AAL3.nii.gz")) {
        let atlas = Atlas::read_on_grid(&aal, true, &mask.grid).unwrap();
        check_all_paths(&gpu, &kernel, &mask, &atlas, &peaks, "neurosynth/aal3");
    }
}

#[test]
fn errors_match_cpu() {
    let Some(gpu) = need_gpu() else { return };
    let mask = Mask::mni152_2mm();
    let atlas = blob_atlas(&mask, 8, 1);
    let kernel = MaKernel::Mkda(MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round));
    let mut peaks = Peaks::new();
    peaks.push("ok", [[0.0, 0.0, 0.0]]);
    peaks.push("study-with-nan", [[f64::NAN, 0.0, 0.0]]);
    let err = ma_xty_cuda(&gpu, &kernel, &mask, &atlas, &peaks).unwrap_err();
    assert!(err.to_string().contains("study-with-nan"), "{err}");
    // No studies: empty output, no launch.
    assert!(
        image_features_cuda(&gpu, &kernel, &mask, &atlas, &Peaks::new())
            .unwrap()
            .is_empty()
    );
    // An atlas off the mask's grid is refused as on the CPU.
    let mut other = mask.grid.clone();
    other.affine[0][3] += 2.0;
    let moved = Mask::from_values(other, &vec![1.0; mask.grid.n_voxels()]);
    assert!(ma_xty_cuda(&gpu, &kernel, &moved, &atlas, &peaks).is_err());
}

/// The kernel's algorithm (first-owner union over clamped peaks and the membership cube) run on
/// the CPU over the tables the GPU would get: exact agreement with the reference up to order.
#[test]
fn emulated_kernel_matches_cpu_without_gpu() {
    let mask = Mask::mni152_2mm();
    let atlas = blob_atlas(&mask, 12, 9);
    let peaks = synthetic_peaks(&mask.grid, 150, 13);
    for (kernel, name, n) in kernels(&mask.grid, peaks.len()) {
        let peaks = subset(&peaks, n);
        let cpu = ma_xty_cpu(&kernel, &mask, &atlas, &peaks).unwrap();
        let emu = ma_xty_emulated(&kernel, &mask, &atlas, &peaks).unwrap();
        assert_close(
            &format!("emulated {name}"),
            &emu,
            &cpu,
            atlas.k,
            1e-12,
            1e-14,
        );
    }
    let boxed = full_box();
    let box_atlas = blob_atlas(&boxed, 6, 17);
    let box_peaks = synthetic_peaks(&boxed.grid, 200, 19);
    for (kernel, name, n) in kernels(&boxed.grid, box_peaks.len()) {
        let box_peaks = subset(&box_peaks, n);
        let cpu = ma_xty_cpu(&kernel, &boxed, &box_atlas, &box_peaks).unwrap();
        let emu = ma_xty_emulated(&kernel, &boxed, &box_atlas, &box_peaks).unwrap();
        let what = format!("emulated full box {name}");
        assert_close(&what, &emu, &cpu, box_atlas.k, 1e-12, 1e-14);
    }
    let err = {
        let mut bad = Peaks::new();
        bad.push("inf-study", [[0.0, f64::INFINITY, 0.0]]);
        let kernel = MaKernel::Mkda(MkdaKernel::for_grid(&mask.grid, 10.0, Rounding::Round));
        ma_xty_emulated(&kernel, &mask, &atlas, &bad).unwrap_err()
    };
    assert!(err.to_string().contains("inf-study"), "{err}");
}

/// The NVRTC fallback compiles every embedded kernel (needs libnvrtc, not a GPU).
#[test]
fn nvrtc_compiles_embedded_kernels() {
    if !need_nvrtc() {
        return;
    }
    for name in cuda::kernel_names() {
        let ptx = cuda::nvrtc_compile(name, "compute_90")
            .unwrap_or_else(|e| panic!("{e}"))
            .to_src();
        assert!(
            ptx.contains(".target sm_90"),
            "{name}: {}",
            &ptx[..ptx.len().min(400)]
        );
        if name == "mkda" {
            for f in [
                "mkda_xty_smem",
                "mkda_xty_global",
                "kda_xty_smem",
                "kda_xty_global",
                "ale_xty_smem",
                "ale_xty_global",
                "solve_rows_f64",
                "f64_to_f32",
            ] {
                assert!(ptx.contains(&format!(".entry {f}")), "{name}: no entry {f}");
            }
        }
        eprintln!("nvrtc ok: kernels/{name}.cu ({} bytes of PTX)", ptx.len());
    }
}
