//! Routing analysis and score charts for `goosepipe report --plots DIR`: for every
//! routed method and task, a heatmap of which experts each adapted module chose
//! (rows: modules in network order; columns: experts; colour: share of the module's
//! (token, slot) choices; retrieval has one row, its per-example choice), and a bar
//! chart of each method's mean score. Each is written as SVG and PNG. The SVG's text is
//! drawn by whatever shows it; the PNG's needs a font file on this machine
//! ([`png_font`]): without one the PNG is the same picture without text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

use super::Results;

pub use crate::artifact_files::ROUTING_JSON;

#[derive(Debug, Clone, Deserialize)]
pub struct ModuleChoices {
    pub expert_names: Vec<String>,
    pub counts: Vec<u64>,
    /// Sum of the routing weights each expert received (absent in old records).
    #[serde(default)]
    pub weight_sums: Vec<f64>,
    pub tokens: u64,
    /// Counts over the tokens marked as telling the task apart (absent when none were).
    #[serde(default)]
    pub marked_counts: Vec<u64>,
    #[serde(default)]
    pub marked_weight_sums: Vec<f64>,
    #[serde(default)]
    pub marked_tokens: u64,
}

pub type RoutingRecord = BTreeMap<String, BTreeMap<String, BTreeMap<String, ModuleChoices>>>;

/// Network order: encoder before decoder, blocks numerically, then the module path.
fn module_order(name: &str) -> (u8, usize, String) {
    let side = u8::from(name.starts_with("decoder"));
    let block = name
        .split('.')
        .skip_while(|p| *p != "block")
        .nth(1)
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    (side, block, name.to_string())
}

/// `s` as a file or folder name: letters, digits, `-` and `_` kept, anything else
/// (path separators, dots, spaces) becomes `-`, so no manifest text can name a path
/// outside the folder it is joined to. A label that had to change gets a short hash
/// of itself appended, so two labels never share a file ("held out", "held-out"). At
/// most 64 characters of the label are kept (a task name may be longer than a file
/// name may be; a cut label gets the hash too).
pub fn slug(s: &str) -> String {
    const KEEP: usize = 64;
    let safe: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(KEEP)
        .collect();
    if safe == s && !s.is_empty() {
        safe
    } else {
        format!("{safe}-{}", &blake3::hash(s.as_bytes()).to_hex()[..8])
    }
}

/// White (never chosen) to dark blue (always chosen).
fn shade(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let l = |full: f64| (255.0 - (255.0 - full) * v) as u8;
    RGBColor(l(8.0), l(48.0), l(107.0))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Rows of shares: for each module (in network order), each expert's share of choices.
fn shares(modules: &BTreeMap<String, ModuleChoices>) -> (Vec<String>, Vec<String>, Vec<Vec<f64>>) {
    let mut names: Vec<&String> = modules.keys().collect();
    names.sort_by_key(|n| module_order(n));
    let experts = modules
        .values()
        .next()
        .map(|m| m.expert_names.clone())
        .unwrap_or_default();
    let rows = names
        .iter()
        .map(|n| {
            let m = &modules[*n];
            let total: u64 = m.counts.iter().sum();
            m.counts.iter().map(|&c| c as f64 / total.max(1) as f64).collect()
        })
        .collect();
    (names.into_iter().cloned().collect(), experts, rows)
}

fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    modules: &[String],
    experts: &[String],
    rows: &[Vec<f64>],
    labels: bool,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (w, h) = root.dim_in_pixel();
    let (left, top) = if labels { (340i32, 40i32) } else { (4, 4) };
    let bottom = if labels { 120i32 } else { 4 };
    let cw = ((w as i32 - left - 4) / experts.len().max(1) as i32).max(1);
    let ch = ((h as i32 - top - bottom) / modules.len().max(1) as i32).max(1);
    // Each cell's share written in it where it fits, light on dark cells.
    let values = labels && cw >= 30 && ch >= 11;
    let tiny = ("sans-serif", 9).into_font();
    for (i, row) in rows.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let (x, y) = (left + j as i32 * cw, top + i as i32 * ch);
            root.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], shade(*v).filled()))
                .map_err(err)?;
            if values {
                let ink = if *v > 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    format!("{v:.2}"),
                    (x + 3, y + 1),
                    tiny.clone().color(&ink),
                ))
                .map_err(err)?;
            }
        }
    }
    if labels {
        let font = ("sans-serif", 14).into_font();
        root.draw(&Text::new(title.to_string(), (4, 10), font.clone()))
            .map_err(err)?;
        // The scale, below the module names: white (never chosen) to dark blue (every
        // choice of the module).
        let (sy, steps, sw) = (h as i32 - 40, 10, 16);
        let small = ("sans-serif", 10).into_font();
        root.draw(&Text::new(
            "share of the choices in the module:",
            (4, sy - 14),
            small.clone(),
        ))
        .map_err(err)?;
        root.draw(&Text::new("0", (4, sy + 1), small.clone()))
            .map_err(err)?;
        for k in 0..=steps {
            let x = 14 + k * sw;
            let v = k as f64 / steps as f64;
            root.draw(&Rectangle::new([(x, sy), (x + sw, sy + 12)], shade(v).filled()))
                .map_err(err)?;
        }
        root.draw(&Text::new("1", (18 + (steps + 1) * sw, sy + 1), small.clone()))
            .map_err(err)?;
        let small = ("sans-serif", 10).into_font();
        for (i, m) in modules.iter().enumerate() {
            root.draw(&Text::new(m.clone(), (4, top + i as i32 * ch), small.clone()))
                .map_err(err)?;
        }
        let rotated = small.transform(FontTransform::Rotate90);
        for (j, e) in experts.iter().enumerate() {
            let y = top + modules.len() as i32 * ch + 4;
            root.draw(&Text::new(
                e.clone(),
                (left + j as i32 * cw + cw / 2, y),
                rotated.clone(),
            ))
            .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    bars: &[(String, f64)],
    labels: bool,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (w, h) = root.dim_in_pixel();
    let (left, top, bottom) = if labels { (40i32, 40i32, 120i32) } else { (4, 4, 4) };
    let bw = ((w as i32 - left - 4) / bars.len().max(1) as i32).max(2);
    let span = (h as i32 - top - bottom).max(1);
    let best = bars.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max);
    for (j, (name, v)) in bars.iter().enumerate() {
        let x = left + j as i32 * bw;
        let y = top + span - (v.clamp(0.0, 1.0) * span as f64) as i32;
        let color = if *v == best {
            RGBColor(8, 48, 107)
        } else {
            RGBColor(107, 174, 214)
        };
        root.draw(&Rectangle::new(
            [(x + 2, y), (x + bw - 2, top + span)],
            color.filled(),
        ))
        .map_err(err)?;
        if labels {
            let small = ("sans-serif", 11).into_font();
            root.draw(&Text::new(
                format!("{:.1}", v * 100.0),
                (x + 4, y - 14),
                small.clone(),
            ))
            .map_err(err)?;
            root.draw(&Text::new(
                name.clone(),
                (x + bw / 2, top + span + 4),
                small.transform(FontTransform::Rotate90),
            ))
            .map_err(err)?;
        }
    }
    if labels {
        root.draw(&Text::new(
            title.to_string(),
            (left, 10),
            ("sans-serif", 14).into_font(),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)
}

/// Where `GOOSEPIPE_PLOT_FONT` may point, else the usual homes of a sans-serif
/// TrueType font on Debian/Ubuntu, Fedora, Arch and macOS.
const FONT_ENV: &str = "GOOSEPIPE_PLOT_FONT";
const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// The font the PNGs' text is drawn with, registered with plotters on first use:
/// `$GOOSEPIPE_PLOT_FONT` if set (an error if it is not a readable TrueType/OpenType
/// file; `none` for no text), else the first of [`FONT_FILES`] that loads. `Ok(None)`:
/// no font.
pub fn png_font() -> Result<Option<&'static Path>, String> {
    static FONT: std::sync::OnceLock<Result<Option<PathBuf>, String>> = std::sync::OnceLock::new();
    let found = FONT.get_or_init(|| {
        let register = |p: &Path| -> Result<(), String> {
            let bytes = crate::file_kind::read_regular(p).map_err(|e| format!("{}: {e}", p.display()))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a TrueType or OpenType font", p.display()))
        };
        match std::env::var_os(FONT_ENV).filter(|v| !v.is_empty()) {
            // `none`: PNGs without text on purpose (the same bytes on every machine).
            Some(v) if v == "none" => return Ok(None),
            Some(p) => {
                let p = PathBuf::from(p);
                return register(&p)
                    .map(|()| Some(p))
                    .map_err(|e| format!("{FONT_ENV}: {e}"));
            }
            None => {}
        }
        Ok(FONT_FILES
            .iter()
            .map(Path::new)
            .find(|p| register(p).is_ok())
            .map(Path::to_path_buf))
    });
    match found {
        Ok(p) => Ok(p.as_deref()),
        Err(e) => Err(e.clone()),
    }
}

/// Writes `stem.svg` and `stem.png` with the same drawing.
fn both(
    dir: &Path,
    stem: &str,
    size: (u32, u32),
    draw: impl Fn(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
    draw_png: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> Result<(), String>,
) -> Result<Vec<PathBuf>, String> {
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    draw(&SVGBackend::new(&svg, size).into_drawing_area())?;
    draw_png(&BitMapBackend::new(&png, size).into_drawing_area())?;
    Ok(vec![svg, png])
}

/// Draws the routing heatmaps and the score chart of one evaluation into `dir`;
/// returns the files written.
pub fn write_plots(
    dir: &Path,
    eval: &str,
    results: &Results,
    routing: Option<&RoutingRecord>,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Without a font file the PNGs are drawn without their text (the SVGs keep it).
    let png_text = png_font()?.is_some();
    let mut written = vec![];
    for (method, tasks) in routing.into_iter().flatten() {
        for (task, modules) in tasks {
            let (names, experts, rows) = shares(modules);
            if names.is_empty() {
                continue;
            }
            let title = format!("{eval}: {method} routing on {task} (share of choices per module)");
            let size = (
                (340 + 34 * experts.len() as u32 + 8).max(480),
                (40 + 14 * names.len() as u32 + 124).max(240),
            );
            let stem = format!("routing-{}-{}", slug(method), slug(task));
            written.extend(both(
                dir,
                &stem,
                size,
                |a| draw_heatmap(a, &title, &names, &experts, &rows, true),
                |a| draw_heatmap(a, &title, &names, &experts, &rows, png_text),
            )?);
        }
    }
    let bars: Vec<(String, f64)> = results
        .methods
        .iter()
        .filter_map(|m| {
            let v: Vec<f64> = results
                .tasks
                .iter()
                .filter_map(|t| results.scores.get(t)?.get(m).copied())
                .collect();
            (!v.is_empty()).then(|| (m.clone(), v.iter().sum::<f64>() / v.len() as f64))
        })
        .collect();
    if !bars.is_empty() {
        let title = format!("{eval}: mean score per method");
        let size = ((40 + 48 * bars.len() as u32 + 8).max(400), 420);
        written.extend(both(
            dir,
            "scores",
            size,
            |a| draw_bars(a, &title, &bars, true),
            |a| draw_bars(a, &title, &bars, png_text),
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_in_network_order() {
        let mut v = [
            "decoder.block.0.layer.0.SelfAttention.q",
            "encoder.block.10.layer.1.DenseReluDense.wo",
            "encoder.block.2.layer.0.SelfAttention.q",
        ];
        v.sort_by_key(|n| module_order(n));
        assert_eq!(v[0], "encoder.block.2.layer.0.SelfAttention.q");
        assert_eq!(v[2], "decoder.block.0.layer.0.SelfAttention.q");
    }
}

#[cfg(test)]
mod slug_tests {
    use super::slug;

    #[test]
    fn slugs_stay_inside_their_folder_and_never_collide() {
        assert_eq!(slug("held-out"), "held-out");
        // Long labels are cut (a 300-character task name made `report --plots` fail on
        // a file name too long), and two that share their first 64 characters differ.
        let (a, b) = (slug(&"x".repeat(300)), slug(&"x".repeat(301)));
        assert!(a.len() <= 64 + 9 && a != b, "{a} {b}");
        let (a, b) = (slug("held out"), slug("held-out"));
        assert_ne!(a, b);
        for s in ["../../x", "/abs/x", "a/b", "..", ""] {
            let x = slug(s);
            assert!(
                !x.contains('/') && !x.starts_with('.') && !x.is_empty(),
                "{s:?} -> {x:?}"
            );
        }
    }
}
