//! Pictures of a decoding, written as SVG and rasterised to PNG with resvg (DejaVu Sans is
//! compiled in, so the output looks the same on every machine):
//! - the paper's Fig. 2 view: the top tasks, concepts and domains as horizontal bars;
//! - orthogonal slices (sagittal, coronal, axial) of the decoded map over the MNI152 T1
//!   template at the map's peak, with a colour bar and the cut coordinates.

use super::decoder::Decoder;
use super::maps::{prepare_volume, Variant};
use super::report::{stems, MapReport};
use crate::brain::resample::{resample_volume_into, sample, Interp};
use crate::brain::{Grid, Image};
use crate::error::{Error, IoContext, Result};
use base64::Engine as _;
use resvg::{tiny_skia, usvg};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT_BOLD: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");
/// MNI152NLin6Asym 2 mm T1 (TemplateFlow), the background of the slices.
const MNI_T1: &[u8] = include_bytes!("../../assets/mni/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz");

/// Bars shown per panel.
pub const TOP: usize = 5;
const INK: &str = "#222222";
const GRID: &str = "#d9d9d9";
const COLOURS: [&str; 3] = ["#2f6fa7", "#d4733a", "#3f8f5b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{}…", cut.trim_end())
    }
}

/// A map's name for a title: its file name (and volume), not the whole path it was given by.
fn display_name(map: &str) -> String {
    Path::new(map)
        .file_name()
        .map_or(map.to_string(), |n| n.to_string_lossy().into_owned())
}

/// A bar label on at most two lines of `width` characters, broken at spaces (cut with an
/// ellipsis only past two lines).
fn wrap_label(s: &str, width: usize) -> Vec<String> {
    if s.chars().count() <= width {
        return vec![s.to_string()];
    }
    let mut first = String::new();
    let mut words = s.split(' ').peekable();
    while let Some(w) = words.peek() {
        let len = first.chars().count() + w.chars().count() + usize::from(!first.is_empty());
        if len > width && !first.is_empty() {
            break;
        }
        if !first.is_empty() {
            first.push(' ');
        }
        first.push_str(words.next().expect("peeked"));
    }
    let rest: Vec<&str> = words.collect();
    if rest.is_empty() {
        return vec![shorten(&first, width)];
    }
    vec![shorten(&first, width), shorten(&rest.join(" "), width)]
}

/// Pixels a 13 px DejaVu Sans label of `chars` characters takes (its mean advance, ~0.6 em).
fn label_px(chars: usize) -> f64 {
    chars as f64 * 7.6
}

/// A round axis maximum and tick step covering `max` (a probability, ≤ 1).
fn axis(max: f32) -> (f32, f32) {
    let max = max.clamp(1e-6, 1.0);
    for (top, step) in [
        (0.001, 0.0005),
        (0.002, 0.001),
        (0.005, 0.001),
        (0.01, 0.005),
        (0.02, 0.01),
        (0.05, 0.01),
        (0.1, 0.05),
        (0.2, 0.05),
        (0.3, 0.1),
        (0.4, 0.1),
        (0.5, 0.1),
        (0.6, 0.2),
        (0.8, 0.2),
        (1.0, 0.2),
    ] {
        if max <= top * 0.9 || top == 1.0 {
            return (top, step);
        }
    }
    (1.0, 0.2)
}

fn tick_label(x: f32, step: f32) -> String {
    let decimals = if step >= 0.1 {
        1
    } else if step >= 0.01 {
        2
    } else if step >= 0.001 {
        3
    } else {
        4
    };
    format!("{x:.decimals$}")
}

/// The paper's Fig. 2 view of one map: three panels of horizontal bars.
pub fn bars_svg(r: &MapReport, subtitle: &str) -> String {
    let panels: [(&str, Vec<(String, f32)>); 3] = [
        (
            "Tasks  P(T|A)",
            r.tasks
                .iter()
                .take(TOP)
                .map(|t| (t.name.clone(), t.probability))
                .collect(),
        ),
        (
            "Concepts  P(C|A)",
            r.concepts
                .iter()
                .take(TOP)
                .map(|c| (c.name.clone(), c.probability))
                .collect(),
        ),
        (
            "Domains  P(D|A)",
            r.domains
                .iter()
                .take(TOP)
                .map(|c| (c.name.clone(), c.probability))
                .collect(),
        ),
    ];
    // Each panel as wide as its longest (wrapped) label needs: no cut names, no wide gaps.
    const WRAP: usize = 30;
    let labels: Vec<Vec<Vec<String>>> = panels
        .iter()
        .map(|(_, rows)| rows.iter().map(|(n, _)| wrap_label(n, WRAP)).collect())
        .collect();
    let label_w: Vec<f64> = labels
        .iter()
        .map(|rows| {
            let chars = rows.iter().flatten().map(|l| l.chars().count()).max();
            label_px(chars.unwrap_or(0)).max(60.0) + 14.0
        })
        .collect();
    let (bar_w, gap) = (210.0, 40.0);
    let (top, row_h) = (96.0, 44.0);
    let width = 2.0 * 24.0 + label_w.iter().sum::<f64>() + 3.0 * (bar_w + 50.0) + 2.0 * gap;
    let height = top + TOP as f64 * row_h + 70.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans" fill="{INK}">
<rect width="100%" height="100%" fill="white"/>
<text x="24" y="32" font-size="19" font-weight="bold">{}</text>
<text x="24" y="55" font-size="13" fill="#555555">{}</text>
"##,
        esc(&shorten(&display_name(&r.map), 120)),
        esc(subtitle)
    );
    let mut x0 = 24.0;
    for (p, (title, rows)) in panels.iter().enumerate() {
        let bx = x0 + label_w[p];
        x0 = bx + bar_w + 50.0 + gap;
        let max = rows.iter().map(|r| r.1).fold(0.0f32, f32::max);
        let (amax, step) = axis(max);
        let scale = bar_w / amax as f64;
        let y_axis = top + TOP as f64 * row_h;
        let _ = writeln!(
            s,
            r##"<text x="{bx}" y="{}" font-size="15" font-weight="bold">{}</text>"##,
            top - 16.0,
            esc(title)
        );
        // Grid lines and ticks.
        let n_ticks = (amax / step).round() as usize;
        for i in 0..=n_ticks {
            let v = i as f32 * step;
            let x = bx + v as f64 * scale;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.2}" y1="{top}" x2="{x:.2}" y2="{y_axis}" stroke="{GRID}" stroke-width="1"/>
<text x="{x:.2}" y="{}" font-size="11.5" text-anchor="middle" fill="#444444">{}</text>"##,
                y_axis + 17.0,
                tick_label(v, step)
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{bx}" y1="{top}" x2="{bx}" y2="{y_axis}" stroke="{INK}" stroke-width="1.2"/>
<line x1="{bx}" y1="{y_axis}" x2="{}" y2="{y_axis}" stroke="{INK}" stroke-width="1.2"/>
<text x="{}" y="{}" font-size="12.5" text-anchor="middle">posterior probability</text>"##,
            bx + bar_w,
            bx + bar_w / 2.0,
            y_axis + 38.0
        );
        for (i, (_, prob)) in rows.iter().enumerate() {
            let y = top + i as f64 * row_h;
            let w = (*prob as f64 * scale).clamp(0.0, bar_w);
            let _ = writeln!(
                s,
                r##"<rect x="{bx}" y="{:.2}" width="{w:.2}" height="{:.2}" fill="{}"/>
<text x="{:.2}" y="{:.2}" font-size="11.5" fill="#333333">{}</text>"##,
                y + 8.0,
                row_h - 16.0,
                COLOURS[p],
                bx + w + 5.0,
                y + row_h / 2.0 + 4.0,
                format_prob(*prob)
            );
            // One or two lines, centred on the bar.
            let lines = &labels[p][i];
            let first = y + row_h / 2.0 + 4.5 - 7.5 * (lines.len() - 1) as f64;
            for (l, line) in lines.iter().enumerate() {
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{:.2}" font-size="13" text-anchor="end">{}</text>"##,
                    bx - 8.0,
                    first + 15.0 * l as f64,
                    esc(line)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The batch view: maps (rows) × the tasks that rank in any map's top 3 (columns, at most
/// 24), each cell the task's posterior for that map, shaded by it; "·" where the task is not
/// in the map's listed tasks (below its --top).
pub fn summary_svg(reports: &[MapReport], subtitle: &str) -> String {
    let mut tasks: Vec<&str> = Vec::new();
    for r in reports {
        for t in r.tasks.iter().take(3) {
            if !tasks.contains(&t.name.as_str()) && tasks.len() < 24 {
                tasks.push(&t.name);
            }
        }
    }
    let prob = |r: &MapReport, task: &str| {
        r.tasks
            .iter()
            .find(|t| t.name == task)
            .map(|t| t.probability)
    };
    let max = reports
        .iter()
        .flat_map(|r| r.tasks.iter().take(3).map(|t| t.probability))
        .fold(1e-12f32, f32::max);
    let names: Vec<String> = reports
        .iter()
        .map(|r| shorten(&display_name(&r.map), 40))
        .collect();
    let label_w = label_px(names.iter().map(|n| n.chars().count()).max().unwrap_or(0)) + 16.0;
    let (cell_w, cell_h, head_h) = (58.0, 30.0, 200.0);
    let (left, top) = (24.0 + label_w, 70.0 + head_h);
    // Room on the right for the last column's label, rotated up to the right.
    let width = left + cell_w * tasks.len() as f64 + 220.0;
    let height = top + cell_h * reports.len() as f64 + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans" fill="{INK}">
<rect width="100%" height="100%" fill="white"/>
<text x="24" y="32" font-size="19" font-weight="bold">Top tasks of {} maps  P(T|A)</text>
<text x="24" y="55" font-size="13" fill="#555555">{}</text>
"##,
        reports.len(),
        esc(subtitle)
    );
    for (c, task) in tasks.iter().enumerate() {
        let x = left + (c as f64 + 0.5) * cell_w;
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" font-size="12" transform="rotate(-40 {x:.1} {:.1})">{}</text>"##,
            top - 8.0,
            top - 8.0,
            esc(&shorten(task, 34))
        );
    }
    for (r, (report, name)) in reports.iter().zip(&names).enumerate() {
        let y = top + r as f64 * cell_h;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="end">{}</text>"##,
            left - 8.0,
            y + cell_h / 2.0 + 4.5,
            esc(name)
        );
        for (c, task) in tasks.iter().enumerate() {
            let x = left + c as f64 * cell_w;
            let (fill, text, ink) = match prob(report, task) {
                Some(p) => {
                    let u = (p / max).clamp(0.0, 1.0);
                    let shade = |a: f32, b: f32| (a + (b - a) * u).round() as u8;
                    let rgb = [shade(247.0, 47.0), shade(251.0, 111.0), shade(255.0, 167.0)];
                    let ink = if u > 0.55 { "white" } else { INK };
                    (
                        format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]),
                        format_prob(p),
                        ink,
                    )
                }
                None => ("#ffffff".to_string(), "·".to_string(), "#999999"),
            };
            let _ = writeln!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{cell_w}" height="{cell_h}" fill="{fill}" stroke="white"/>
<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="{ink}">{text}</text>"##,
                x + cell_w / 2.0,
                y + cell_h / 2.0 + 4.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn format_prob(p: f32) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// The MNI152 T1 template compiled into the binary.
pub fn mni_t1() -> Result<Image> {
    Image::from_bytes(
        MNI_T1.to_vec(),
        Path::new("embedded tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"),
    )
}

/// The T1 template, its 99th percentile and its head-only values, made once per process (a
/// batch draws hundreds of maps over the same background).
fn template() -> Result<&'static (Image, f32, Vec<f32>)> {
    static T1: std::sync::OnceLock<(Image, f32, Vec<f32>)> = std::sync::OnceLock::new();
    if let Some(t) = T1.get() {
        return Ok(t);
    }
    let t1 = mni_t1()?;
    let t1_max = positive_p99(&t1.data);
    let head = head_only(&t1, t1_max);
    Ok(T1.get_or_init(|| (t1, t1_max, head)))
}

/// The template with everything but the head set to 0: the largest 6-connected component of
/// the clearly bright voxels (faint noise bridges it to the speckles around the head, which
/// showed), grown by two voxels to keep the head's faint edge.
fn head_only(t1: &Image, t1_max: f32) -> Vec<f32> {
    let g = &t1.grid;
    let bright: Vec<bool> = t1.data.iter().map(|&a| a > 0.2 * t1_max).collect();
    let mut label = vec![0u32; bright.len()];
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 0u32);
    for seed in 0..bright.len() {
        if !bright[seed] || label[seed] != 0 {
            continue;
        }
        next += 1;
        label[seed] = next;
        let (mut stack, mut size) = (vec![seed], 0usize);
        while let Some(v) = stack.pop() {
            size += 1;
            let [i, j, k] = g.unflat(v);
            let n = g.shape;
            let near = [
                (i > 0).then(|| g.flat(i - 1, j, k)),
                (i + 1 < n[0]).then(|| g.flat(i + 1, j, k)),
                (j > 0).then(|| g.flat(i, j - 1, k)),
                (j + 1 < n[1]).then(|| g.flat(i, j + 1, k)),
                (k > 0).then(|| g.flat(i, j, k - 1)),
                (k + 1 < n[2]).then(|| g.flat(i, j, k + 1)),
            ];
            for u in near.into_iter().flatten() {
                if bright[u] && label[u] == 0 {
                    label[u] = next;
                    stack.push(u);
                }
            }
        }
        if size > best_size {
            (best, best_size) = (next, size);
        }
    }
    let mut head: Vec<bool> = label.iter().map(|&l| l == best).collect();
    for _ in 0..2 {
        head = grow(g, &head);
    }
    t1.data
        .iter()
        .zip(&head)
        .map(|(&a, &h)| if h { a } else { 0.0 })
        .collect()
}

/// `inside` grown by one voxel along each axis.
fn grow(g: &Grid, inside: &[bool]) -> Vec<bool> {
    let mut out = inside.to_vec();
    for (v, _) in inside.iter().enumerate().filter(|(_, &x)| x) {
        let [i, j, k] = g.unflat(v);
        for (d, (x, n)) in [i, j, k].into_iter().zip(g.shape).enumerate() {
            // x − 1 wraps to usize::MAX at 0, which the bound drops.
            for c in [x.wrapping_sub(1), x + 1] {
                if c < n {
                    let mut p = [i, j, k];
                    p[d] = c;
                    out[g.flat(p[0], p[1], p[2])] = true;
                }
            }
        }
    }
    out
}

/// Below this share of the template's 99th percentile the anatomy fades into the page.
const HEAD_FADE: f32 = 0.075;

/// Cold-hot colour of a value beyond the threshold: dark red → yellow above, blue → cyan below.
fn cold_hot(t: f32, negative: bool) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32, u: f32| a + (b - a) * u;
    let (r, g, b) = if t < 0.5 {
        let u = t / 0.5;
        (lerp(0.70, 1.0, u), lerp(0.0, 0.45, u), 0.0)
    } else {
        let u = (t - 0.5) / 0.5;
        (1.0, lerp(0.45, 1.0, u), lerp(0.0, 0.35, u))
    };
    let c = if negative { [b, g, r] } else { [r, g, b] };
    c.map(|x| (x * 255.0).round() as u8)
}

/// How the overlay is coloured: values with |v| ≥ `threshold` are shown, scaled to `vmax`.
struct Overlay {
    vmax: f32,
    threshold: f32,
    binary: bool,
    has_negative: bool,
}

impl Overlay {
    fn of(vol: &[f32]) -> Overlay {
        let vmax = vol.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        let binary = vol.iter().all(|&x| x == 0.0 || x == vmax);
        Overlay {
            vmax,
            threshold: if binary { vmax * 0.5 } else { vmax * 0.2 },
            binary,
            has_negative: vol.iter().any(|&x| x < 0.0),
        }
    }

    fn colour(&self, v: f32) -> Option<[u8; 3]> {
        if v.abs() < self.threshold || self.vmax == 0.0 {
            return None;
        }
        if self.binary {
            return Some([230, 80, 30]);
        }
        let t = (v.abs() - self.threshold) / (self.vmax - self.threshold).max(1e-12);
        Some(cold_hot(t, v < 0.0))
    }
}

/// One slice rendered to RGBA at `px` pixels per voxel, bilinear in-plane.
/// `axes` = (horizontal axis, vertical axis, fixed axis) in voxel indices of `grid`.
#[allow(clippy::too_many_arguments)]
fn slice_png(
    t1: &[f32],
    t1_max: f32,
    map: &[f32],
    overlay: &Overlay,
    grid: &Grid,
    axes: (usize, usize, usize),
    cut: f64,
    px: usize,
) -> (Vec<u8>, usize, usize) {
    let (h, v, f) = axes;
    let (nh, nv) = (grid.shape[h], grid.shape[v]);
    let (w_px, h_px) = (nh * px, nv * px);
    let mut pixmap = tiny_skia::Pixmap::new(w_px as u32, h_px as u32).expect("slice size");
    let data = pixmap.data_mut();
    for row in 0..h_px {
        for col in 0..w_px {
            let mut c = [0.0f64; 3];
            c[h] = (col as f64 + 0.5) / px as f64 - 0.5;
            // Vertical axis points up: the top row is the largest index.
            c[v] = (h_px - 1 - row) as f64 / px as f64 + 0.5 / px as f64 - 0.5;
            c[f] = cut;
            let a = sample(t1, grid, c, Interp::Linear);
            let m = sample(map, grid, c, Interp::Linear);
            let at = 4 * (row * w_px + col);
            let rgba = if let Some(rgb) = overlay.colour(m) {
                [rgb[0], rgb[1], rgb[2], 255]
            } else {
                // Grey anatomy fading into the white page below ~10 % of the 99th percentile
                // (the template's background noise).
                let u = (a / t1_max).clamp(0.0, 1.0);
                let alpha = ((u - HEAD_FADE) / 0.025).clamp(0.0, 1.0);
                let g = (u * 235.0 + 10.0) * alpha + 255.0 * (1.0 - alpha);
                let g = g.round() as u8;
                [g, g, g, 255]
            };
            data[at..at + 4].copy_from_slice(&rgba);
        }
    }
    let png = pixmap.encode_png().expect("PNG encoding of a slice");
    (png, w_px, h_px)
}

/// Where the slices cut, and the map's peak value: a ROI through the in-ROI voxel nearest its
/// centre, a statistical map at its peak |value|.
fn cut_voxel(map: &[f32], g: &Grid, overlay: &Overlay) -> ([usize; 3], f32) {
    let peak = map
        .iter()
        .enumerate()
        .fold((0, 0.0f32), |(bi, bv), (i, &x)| {
            if x.abs() > bv.abs() {
                (i, x)
            } else {
                (bi, bv)
            }
        });
    if !overlay.binary {
        return (g.unflat(peak.0), peak.1);
    }
    let inside: Vec<[usize; 3]> = map
        .iter()
        .enumerate()
        .filter(|(_, &x)| x.abs() >= overlay.threshold)
        .map(|(i, _)| g.unflat(i))
        .collect();
    let c: [f64; 3] = std::array::from_fn(|a| {
        inside.iter().map(|v| v[a] as f64).sum::<f64>() / inside.len() as f64
    });
    let d = |v: &[usize; 3]| (0..3).map(|a| (v[a] as f64 - c[a]).powi(2)).sum::<f64>();
    let ijk = *inside
        .iter()
        .min_by(|p, q| d(p).total_cmp(&d(q)))
        .expect("a binary map with voxels");
    (ijk, peak.1)
}

/// The 99th percentile of the positive values (the T1's white, for its grey scale).
fn positive_p99(values: &[f32]) -> f32 {
    let mut v: Vec<f32> = values.iter().copied().filter(|&x| x > 0.0).collect();
    let at = ((v.len() as f64 * 0.99) as usize).min(v.len() - 1);
    *v.select_nth_unstable_by(at, |a, b| a.total_cmp(b)).1
}

/// Orthogonal slices of `vol` (on `grid`) over the MNI T1 at the peak |value|.
pub fn slices_svg(vol: &[f32], grid: &Grid, title: &str, subtitle: &str) -> Result<String> {
    let (t1, t1_max, head) = template()?;
    let g = &t1.grid;
    let mut map = vec![0.0f32; g.n_voxels()];
    resample_volume_into(vol, grid, g, Interp::Linear, &mut map);
    let overlay = Overlay::of(&map);
    if overlay.vmax == 0.0 {
        return Err(Error::Usage(format!(
            "{title}: the map has no voxel inside the MNI template's box to show"
        )));
    }
    let (ijk, peak) = cut_voxel(&map, g, &overlay);
    let mm = g.voxel_to_mm([ijk[0] as f64, ijk[1] as f64, ijk[2] as f64]);
    let px = 4;
    // sagittal: y → right, z ↑ ; coronal: x → right, z ↑ ; axial: x → right, y ↑
    let views = [
        ("x", (1, 2, 0), ijk[0], mm[0]),
        ("y", (0, 2, 1), ijk[1], mm[1]),
        ("z", (0, 1, 2), ijk[2], mm[2]),
    ];
    let rendered: Vec<_> = views
        .iter()
        .map(|&(name, axes, cut, c_mm)| {
            let (png, w, h) = slice_png(head, *t1_max, &map, &overlay, g, axes, cut as f64, px);
            (name, axes, png, w, h, c_mm)
        })
        .collect();
    let panel_h = rendered.iter().map(|r| r.4).max().unwrap_or(0) as f64;
    let (left, top, gap) = (24.0, 78.0, 18.0);
    let bar_w = 120.0;
    let width = left + rendered.iter().map(|r| r.3 as f64).sum::<f64>() + gap * 2.0 + 30.0 + bar_w;
    let height = top + panel_h + 56.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans" fill="{INK}">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="32" font-size="19" font-weight="bold">{}</text>
<text x="{left}" y="55" font-size="13" fill="#555555">{}</text>
"##,
        esc(&shorten(&display_name(title), 120)),
        esc(&if overlay.binary {
            format!(
                "{subtitle}ROI centre at MNI ({:.0}, {:.0}, {:.0}) mm",
                mm[0], mm[1], mm[2]
            )
        } else {
            format!(
                "{subtitle}peak {:.3} at MNI ({:.0}, {:.0}, {:.0}) mm",
                peak, mm[0], mm[1], mm[2]
            )
        })
    );
    let mut x = left;
    for (name, (h, v, _), png, w, hpx, c_mm) in &rendered {
        let y = top + (panel_h - *hpx as f64) / 2.0;
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        let _ = writeln!(
            s,
            r##"<image x="{x}" y="{y}" width="{w}" height="{hpx}" xlink:href="data:image/png;base64,{b64}"/>"##
        );
        // Cross-hairs through the peak.
        let ch = |axis: usize| -> f64 {
            let idx = ijk[axis] as f64 + 0.5;
            idx * px as f64
        };
        let cx = x + ch(*h);
        let cy = y + *hpx as f64 - ch(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{cx:.1}" y1="{y}" x2="{cx:.1}" y2="{:.1}" stroke="#5aa0ff" stroke-width="1" stroke-opacity="0.7"/>
<line x1="{x}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="#5aa0ff" stroke-width="1" stroke-opacity="0.7"/>
<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">{name} = {c_mm:.0}</text>"##,
            y + *hpx as f64,
            x + *w as f64,
            x + *w as f64 / 2.0,
            top + panel_h + 26.0
        );
        if *h == 0 {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold" fill="#777777">L</text>
<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold" fill="#777777" text-anchor="end">R</text>"##,
                x + 4.0,
                y + 18.0,
                x + *w as f64 - 4.0,
                y + 18.0
            );
        }
        x += *w as f64 + gap;
    }
    if !overlay.binary {
        colour_bar(&mut s, &overlay, x + 12.0, top + 10.0, panel_h - 20.0);
    }
    s.push_str("</svg>\n");
    Ok(s)
}

fn colour_bar(s: &mut String, o: &Overlay, x: f64, y: f64, h: f64) {
    let w = 18.0;
    let lo = if o.has_negative { -o.vmax } else { 0.0 };
    let steps = 128;
    for i in 0..steps {
        let v = o.vmax - (o.vmax - lo) * (i as f32 + 0.5) / steps as f32;
        let fill = match o.colour(v) {
            Some([r, g, b]) => format!("rgb({r},{g},{b})"),
            None => "#eeeeee".to_string(),
        };
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="{:.2}" width="{w}" height="{:.2}" fill="{fill}"/>"##,
            y + h * i as f64 / steps as f64,
            h / steps as f64 + 0.6
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="{INK}" stroke-width="1"/>"##
    );
    let mut ticks = vec![o.vmax, o.threshold];
    if o.has_negative {
        ticks.extend([-o.threshold, -o.vmax]);
    } else {
        ticks.push(0.0);
    }
    for v in ticks {
        let ty = y + h * ((o.vmax - v) / (o.vmax - lo)) as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{ty:.1}" x2="{}" y2="{ty:.1}" stroke="{INK}" stroke-width="1"/>
<text x="{}" y="{:.1}" font-size="12">{}</text>"##,
            x + w,
            x + w + 4.0,
            x + w + 7.0,
            ty + 4.0,
            if v.abs() >= 100.0 || v == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        );
    }
}

/// Draws each decoded map's pictures beside `file` (.png or .svg): its top tasks, concepts and
/// domains, and the map as decoded over the MNI T1 at its peak; for several maps also
/// FILE-summary, maps × their top tasks. `reports` are the volumes of
/// the files `counts` names (path, volumes) in order; `scale_note` says which s scaled them.
pub fn write_pictures(
    decoder: &Decoder,
    variant: &Variant,
    reports: &[MapReport],
    counts: &[(PathBuf, usize)],
    file: &Path,
    scale_note: &str,
) -> Result<()> {
    let n = reports.len();
    let stems = stems(counts);
    let mut i = 0;
    let variant_note = variant.note();
    for (path, n_vols) in counts {
        let img = Image::read(path)?;
        for v in 0..*n_vols {
            let (r, stem) = (&reports[i], &stems[i]);
            let target = plot_path(file, stem, n);
            let subtitle = format!("{scale_note}{variant_note}");
            save(&bars_svg(r, &subtitle), &target)?;
            let vol = prepare_volume(decoder.atlas(), &img, v, variant, path)?;
            let svg = slices_svg(
                &vol,
                &decoder.atlas().grid,
                &r.map,
                &format!("decoded map{variant_note} · "),
            )?;
            let slices = slices_path(&target);
            save(&svg, &slices)?;
            if n <= 5 {
                eprintln!("pictures → {} and {}", target.display(), slices.display());
            }
            i += 1;
        }
    }
    if n > 1 {
        let summary = suffixed(file, "-summary");
        save(
            &summary_svg(reports, &format!("{scale_note}{variant_note}")),
            &summary,
        )?;
        eprintln!("summary of the {n} maps → {}", summary.display());
    }
    if n > 5 {
        eprintln!("{n} pairs of pictures beside {}", file.display());
    }
    Ok(())
}

/// The picture file for map `i` of `n`: FILE itself for one map, FILE-<stem>.ext for several.
pub fn plot_path(file: &Path, stem: &str, n: usize) -> PathBuf {
    if n == 1 {
        return file.to_path_buf();
    }
    suffixed(file, &format!("-{stem}"))
}

/// FILE-slices.ext beside FILE.
pub fn slices_path(file: &Path) -> PathBuf {
    suffixed(file, "-slices")
}

fn suffixed(file: &Path, suffix: &str) -> PathBuf {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("plot");
    let ext = file.extension().and_then(|s| s.to_str()).unwrap_or("png");
    file.with_file_name(format!("{stem}{suffix}.{ext}"))
}

/// Checks that FILE ends in .png or .svg.
pub fn check_plot_path(file: &Path) -> Result<()> {
    match file.extension().and_then(|e| e.to_str()) {
        Some("png") | Some("svg") => Ok(()),
        _ => Err(Error::Usage(format!(
            "{}: --plot must end in .png or .svg",
            file.display()
        ))),
    }
}

/// Writes the SVG as is (.svg) or rasterised at 2× (.png).
pub fn save(svg: &str, path: &Path) -> Result<()> {
    if path.extension().is_some_and(|e| e == "svg") {
        return crate::io::write_atomic(path, |w| {
            std::io::Write::write_all(w, svg.as_bytes()).at(path)
        });
    }
    let png = rasterise(svg, 2.0).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    crate::io::write_atomic(path, |w| std::io::Write::write_all(w, &png).at(path))
}

/// The SVG as PNG bytes at `zoom`× its size.
pub fn rasterise(svg: &str, zoom: f32) -> std::result::Result<Vec<u8>, String> {
    let mut options = usvg::Options {
        font_family: "DejaVu Sans".into(),
        ..Default::default()
    };
    let db = options.fontdb_mut();
    db.load_font_data(FONT.to_vec());
    db.load_font_data(FONT_BOLD.to_vec());
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| format!("bad SVG: {e}"))?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(zoom)
        .ok_or("empty picture")?;
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("picture too large")?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(zoom, zoom),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| format!("PNG encoding: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_covers_the_largest_bar() {
        for m in [0.0004f32, 0.004, 0.03, 0.12, 0.45, 0.95, 1.0] {
            let (top, step) = axis(m);
            assert!(top >= m, "{m} -> {top}");
            assert!(top / step <= 10.0 + 1e-6);
        }
    }

    #[test]
    fn long_names_wrap_onto_two_lines_and_titles_are_file_names() {
        assert_eq!(
            wrap_label("emotional localizer fMRI task paradigm", 30),
            ["emotional localizer fMRI task", "paradigm"]
        );
        assert_eq!(wrap_label("pain", 30), ["pain"]);
        let long = "a very long task name that goes on and on and on beyond two lines";
        let lines = wrap_label(long, 30);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with('…') && lines.iter().all(|l| l.chars().count() <= 30));
        assert_eq!(
            display_name("/data/study/sub-01_zmap.nii.gz"),
            "sub-01_zmap.nii.gz"
        );
    }

    #[test]
    fn names_are_escaped_and_shortened() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
