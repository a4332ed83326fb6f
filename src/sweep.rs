//! `fasp-engine sweep`: methods × sparsities on the same calibration windows and the same
//! evaluation windows, a table, a CSV and an SVG plot of perplexity against sparsity.

use crate::calib;
use crate::error::{FaspError, Result};
use crate::job::{self, Device, EvalSet};
use crate::model::Model;
use crate::prune::{Method, PruneConfig};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A method as the sweep names it: `fasp-no-restore` is FASP without restoration.
#[derive(Clone, Debug)]
pub struct SweepMethod {
    pub label: String,
    pub method: Method,
    pub restore: bool,
}

impl SweepMethod {
    pub fn parse(s: &str) -> Result<SweepMethod> {
        let (method, restore) = match s {
            "fasp" => (Method::Fasp, true),
            "fasp-no-restore" => (Method::Fasp, false),
            "wanda-sp" => (Method::WandaSp, false),
            "flap" => (Method::Flap, false),
            "magnitude" => (Method::Magnitude, false),
            "random" => (Method::Random, false),
            other => {
                return Err(FaspError::Arg(format!("unknown method {other:?} (fasp, fasp-no-restore, wanda-sp, flap, magnitude, random)")))
            }
        };
        Ok(SweepMethod { label: s.to_string(), method, restore })
    }
}

#[derive(Clone, Debug)]
pub struct SweepSpec {
    pub model: PathBuf,
    pub calib: PathBuf,
    pub nsamples: Option<usize>,
    pub seqlen: Option<usize>,
    pub seed: u64,
    pub damp: f64,
    pub methods: Vec<SweepMethod>,
    pub sparsities: Vec<f64>,
    /// (name, path) of each evaluation set.
    pub evals: Vec<(String, PathBuf)>,
    pub eval_seqlen: usize,
    pub eval_windows: Option<usize>,
    pub device: Device,
}

#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub method: String,
    pub sparsity: f64,
    pub eval: String,
    pub ppl: f64,
    pub windows: usize,
    pub seqlen: usize,
    pub params: usize,
    pub prune_seconds: f64,
}

/// Runs every method at every sparsity (plus the dense model once) and returns the rows.
pub fn run(spec: &SweepSpec, mut on_row: impl FnMut(&SweepRow)) -> Result<Vec<SweepRow>> {
    if spec.methods.is_empty() || spec.sparsities.is_empty() || spec.evals.is_empty() {
        return Err(FaspError::Arg("a sweep needs at least one method, sparsity and evaluation set".into()));
    }
    for &s in &spec.sparsities {
        crate::prune::plan::check_sparsity(s)?;
    }
    let model = Model::open(&spec.model)?;
    let tok = model.tokenizer()?;
    let windows = calib::calibration(&spec.calib, tok.as_ref(), spec.nsamples, spec.seqlen, spec.seed, model.cfg.vocab)?;
    let evals: Vec<EvalSet> =
        spec.evals.iter().map(|(n, p)| EvalSet::load(&model, n, p, spec.eval_seqlen, spec.eval_windows)).collect::<Result<_>>()?;
    // every setting and the device are checked before the first row, so a bad one fails up front
    let config = |m: &SweepMethod, s: f64| PruneConfig {
        sparsity: s,
        damp: spec.damp,
        restore: m.restore,
        skip_attn: false,
        method: m.method,
        seed: spec.seed,
    };
    for m in &spec.methods {
        for &s in &spec.sparsities {
            crate::prune::pipeline::check_settings(&model, &config(m, s))?;
        }
    }
    drop(job::backend(spec.device)?);
    let mut rows = Vec::new();
    let dense_params = model.param_count();
    for e in &evals {
        let p = crate::eval::perplexity(&model, &e.ids, e.seqlen, |_| {})?;
        let row = SweepRow {
            method: "dense".into(),
            sparsity: 0.0,
            eval: e.name.clone(),
            ppl: p.ppl,
            windows: p.windows,
            seqlen: p.seqlen,
            params: dense_params,
            prune_seconds: 0.0,
        };
        on_row(&row);
        rows.push(row);
    }
    let non_layer = model.non_layer_param_count();
    for m in &spec.methods {
        for &s in &spec.sparsities {
            let opts = config(m, s);
            let mut backend = job::backend(spec.device)?;
            let mut params = non_layer;
            let t0 = std::time::Instant::now();
            let run = job::prune_and_eval(&model, &windows, &opts, backend.as_mut(), &evals, None, &mut |_, lw| {
                params += lw.param_count();
                Ok(())
            })?;
            let secs = t0.elapsed().as_secs_f64() - run.eval_seconds;
            for (p, e) in run.ppl.iter().zip(&evals) {
                let row = SweepRow {
                    method: m.label.clone(),
                    sparsity: s,
                    eval: e.name.clone(),
                    ppl: p.ppl,
                    windows: p.windows,
                    seqlen: p.seqlen,
                    params,
                    prune_seconds: secs,
                };
                on_row(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

pub fn write_csv(rows: &[SweepRow], path: &Path) -> Result<()> {
    let mut s = String::from("method,sparsity,eval,ppl,windows,seqlen,params,prune_seconds\n");
    for r in rows {
        s += &format!(
            "{},{},{},{:.6},{},{},{},{:.3}\n",
            r.method, r.sparsity, r.eval, r.ppl, r.windows, r.seqlen, r.params, r.prune_seconds
        );
    }
    // written beside the target and renamed, so a reader never sees half a file
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, s).map_err(|e| FaspError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FaspError::io(path, e))
}

/// A table with one row per method and one column per sparsity, for one eval set.
pub fn table(rows: &[SweepRow], eval: &str) -> String {
    let mut sp: Vec<f64> = rows.iter().filter(|r| r.method != "dense").map(|r| r.sparsity).collect();
    sp.sort_by(f64::total_cmp);
    sp.dedup();
    let mut methods: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.eval == eval) {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    let mut out = format!(
        "| method | {} |\n|---|{}\n",
        sp.iter().map(|s| format!("{:.0}%", s * 100.0)).collect::<Vec<_>>().join(" | "),
        "---|".repeat(sp.len())
    );
    for m in methods {
        let cells: Vec<String> = sp
            .iter()
            .map(|&s| {
                rows.iter()
                    .find(|r| r.eval == eval && r.method == m && (r.sparsity == s || m == "dense"))
                    .map_or("-".into(), |r| format!("{:.3}", r.ppl))
            })
            .collect();
        out += &format!("| {m} | {} |\n", cells.join(" | "));
    }
    out
}

/// Perplexity against sparsity, one line per method (the dense model as the 0% point of each).
pub fn plot_svg(rows: &[SweepRow], eval: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| FaspError::Output { path: path.into(), msg: e.to_string() };
    let dense = rows.iter().find(|r| r.eval == eval && r.method == "dense").map(|r| r.ppl);
    let mut methods: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.eval == eval && r.method != "dense") {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    let pts = |m: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = dense.map(|d| (0.0, d)).into_iter().collect();
        v.extend(rows.iter().filter(|r| r.eval == eval && r.method == m).map(|r| (r.sparsity * 100.0, r.ppl)));
        v
    };
    let all: Vec<(f64, f64)> = methods.iter().flat_map(|m| pts(m)).collect();
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let (ymin, ymax) = all.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let root = SVGBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("perplexity vs sparsity ({eval})"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.05, (ymin * 0.95).ln()..(ymax * 1.05).ln())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("sparsity (%)")
        .y_desc("perplexity (log scale)")
        .y_label_formatter(&|y| format!("{:.1}", y.exp()))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, m) in methods.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let data: Vec<(f64, f64)> = pts(m).into_iter().map(|(x, y)| (x, y.ln())).collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(m.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(data.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Reads a CSV that [`write_csv`] wrote.
pub fn read_csv(path: &Path) -> Result<Vec<SweepRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| FaspError::io(path, e))?;
    let bad = |line: usize, msg: &str| FaspError::Arg(format!("{}:{line}: {msg}", path.display()));
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == "method,sparsity,eval,ppl,windows,seqlen,params,prune_seconds" => {}
        _ => return Err(bad(1, "not a sweep CSV (expected the header method,sparsity,eval,ppl,windows,seqlen,params,prune_seconds)")),
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 8 {
            return Err(bad(i + 1, &format!("expected 8 fields, found {}", f.len())));
        }
        let num = |k: usize, what: &str| -> Result<f64> {
            f[k].trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(i + 1, &format!("bad {what} {:?}", f[k])))
        };
        let int = |k: usize, what: &str| -> Result<usize> {
            f[k].trim().parse::<usize>().map_err(|_| bad(i + 1, &format!("bad {what} {:?}", f[k])))
        };
        rows.push(SweepRow {
            method: f[0].trim().to_string(),
            sparsity: num(1, "sparsity")?,
            eval: f[2].trim().to_string(),
            ppl: num(3, "perplexity")?,
            windows: int(4, "window count")?,
            seqlen: int(5, "seqlen")?,
            params: int(6, "parameter count")?,
            prune_seconds: num(7, "prune time")?,
        });
    }
    Ok(rows)
}

/// Merges the rows of several sweeps run with the same settings. A (method, sparsity, eval) row
/// that appears twice must agree (perplexity to 1e-6 relative, windows, seqlen, parameters), and
/// every evaluation set must have one window count and seqlen: otherwise the runs did not measure
/// the same thing and merging them is an error. Rows come out in the method order of `--methods`'
/// default (dense first), then by sparsity.
pub fn merge(sets: Vec<Vec<SweepRow>>) -> Result<Vec<SweepRow>> {
    let mut out: Vec<SweepRow> = Vec::new();
    for r in sets.into_iter().flatten() {
        if let Some(o) = out.iter().find(|o| o.eval == r.eval && (o.windows != r.windows || o.seqlen != r.seqlen)) {
            return Err(FaspError::Arg(format!(
                "evaluation set {:?} was measured on {} windows of {} in one sweep and {} windows of {} in another",
                r.eval, o.windows, o.seqlen, r.windows, r.seqlen
            )));
        }
        let same = |o: &SweepRow| o.method == r.method && o.eval == r.eval && (o.sparsity == r.sparsity || r.method == "dense");
        match out.iter().find(|o| same(o)) {
            Some(o) => {
                if (o.ppl - r.ppl).abs() > 1e-6 * o.ppl.abs().max(1.0) || o.params != r.params {
                    return Err(FaspError::Arg(format!(
                        "{} at {} on {:?} differs between sweeps (perplexity {} vs {}, parameters {} vs {}): were they run with the same settings?",
                        r.method, r.sparsity, r.eval, o.ppl, r.ppl, o.params, r.params
                    )));
                }
            }
            None => out.push(r),
        }
    }
    const ORDER: [&str; 7] = ["dense", "fasp", "fasp-no-restore", "wanda-sp", "flap", "magnitude", "random"];
    let rank = |m: &str| ORDER.iter().position(|o| *o == m).unwrap_or(ORDER.len());
    out.sort_by(|a, b| rank(&a.method).cmp(&rank(&b.method)).then(a.sparsity.total_cmp(&b.sparsity)));
    Ok(out)
}
