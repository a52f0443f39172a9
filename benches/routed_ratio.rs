//! What routing among N experts costs next to routing among 2, measured in
//! pairs: one model per expert count (the same base, random rank-16 experts,
//! PHATGOOSE top-2; the setup of `model_forward`'s routed group), and rounds
//! in which every model runs one forward, in a rotating order. Each round
//! gives a ratio per model from forwards a fraction of a second apart, so the
//! slow drifts of a shared VM (its speed can change by half within minutes)
//! cancel, where criterion's one-group-after-the-other means do not.
//!
//! Run: `cargo bench --bench routed_ratio [-- [--rounds R] [--max-ratio X] [N ...]]`
//! (on a GPU: `GOOSEPIPE_BENCH_DEVICE=cuda` with a `--features cuda` build)
//! (expert counts default to 2 8 36 166; the first is the baseline). With
//! `--max-ratio`, exits 1 when the last count's median ratio exceeds it.
//! Numbers: benches/README.md.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::DType;
use goosepipe::model::T5Model;

mod common;

/// The allocator the goosepipe binary runs with (its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    counts: Vec<usize>,
    rounds: usize,
    max_ratio: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        counts: Vec::new(),
        rounds: 30,
        max_ratio: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            // What cargo passes to every bench binary.
            "--bench" => {}
            "--rounds" => args.rounds = value("--rounds")?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--max-ratio" => {
                args.max_ratio = Some(
                    value("--max-ratio")?
                        .parse()
                        .map_err(|e| format!("--max-ratio: {e}"))?,
                )
            }
            n => args.counts.push(
                n.parse()
                    .map_err(|_| format!("`{n}` is not an expert count or a known flag"))?,
            ),
        }
    }
    if args.counts.is_empty() {
        args.counts = vec![2, 8, 36, 166];
    }
    if args.counts.contains(&0) || args.rounds == 0 {
        return Err("expert counts and --rounds must be at least 1".into());
    }
    Ok(args)
}

/// The `q`-quantile of `xs` (nearest rank).
fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread exists.
    unsafe { goosepipe::process::threads::pin_thread_count() };
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("routed_ratio: {e}");
            return ExitCode::from(2);
        }
    };
    let dev = common::device();
    let cfg = common::config();
    let b = common::batch(&cfg, &dev);
    let models: Vec<T5Model> = args
        .counts
        .iter()
        .map(|&n| {
            let mut model = T5Model::init_random(&cfg, 1, &dev, DType::F32).unwrap();
            common::route_among(&mut model, &cfg, n);
            model
        })
        .collect();
    let forward = |m: &T5Model| {
        let t = Instant::now();
        black_box(
            m.forward(&b.input_ids, &b.attention_mask, &b.decoder_input_ids)
                .unwrap(),
        );
        common::sync(&dev);
        t.elapsed().as_secs_f64() * 1e3
    };
    for m in &models {
        forward(m);
        forward(m);
    }
    let k = models.len();
    let mut times = vec![Vec::with_capacity(args.rounds); k];
    for round in 0..args.rounds {
        for j in 0..k {
            let i = (round + j) % k;
            times[i].push(forward(&models[i]));
        }
    }
    println!(
        "routed forward on {dev:?}, d_model 256, batch {}x{}, top-2, {} threads, {} rounds",
        common::BATCH,
        common::SRC_LEN,
        rayon::current_num_threads(),
        args.rounds
    );
    println!(
        "experts | median ms | min ms | ratio to {} (median [quartiles] of per-round ratios)",
        args.counts[0]
    );
    let mut last = 1.0;
    for (i, &n) in args.counts.iter().enumerate() {
        let ratios: Vec<f64> = times[i].iter().zip(&times[0]).map(|(t, t0)| t / t0).collect();
        last = quantile(&ratios, 0.5);
        println!(
            "{n:7} | {:9.1} | {:6.1} | {last:.3} [{:.3}, {:.3}]",
            quantile(&times[i], 0.5),
            quantile(&times[i], 0.0),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
        );
    }
    match args.max_ratio {
        Some(max) if last > max => {
            eprintln!(
                "routed_ratio: {} experts cost {last:.3}x {} experts (median), above --max-ratio {max}",
                args.counts[k - 1],
                args.counts[0]
            );
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}
