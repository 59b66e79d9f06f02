//! Decoder step micro-benchmark: the time of one greedy decoding step (one token through every
//! decoder layer, cross-attention over a full window, and the output projection, screened as
//! greedy decoding screens it), at the context lengths of a real window, apart from the
//! encoder, the prompt pass and the token filters.
//!
//! The window's encoder output is synthetic (deterministic values of the spread of a real one):
//! a step's cost does not depend on the values, only on the shapes.
//!
//! ```text
//! cargo run --release --example decoder_bench -- [--model NAME|DIR] [--compute-type T]
//!     [--threads N] [--steps N] [--rounds N] [--prompt N]
//! ```
//!
//! Prints the CPU, the compute type, the median and 10th/90th percentile of the per-step time
//! over `rounds` × `steps` steps (each round: a fresh window, the prompt, then `steps`
//! single-token steps), and the median time of the prompt pass: `--prompt N` tokens of previous
//! text before the 4 task tokens (a window conditioned on the previous one carries up to 223).

use std::time::Instant;

use gstwhispernpu::engine::{self, ComputeType, LoadOptions};

mod common;

const USAGE: &str = "\
usage: decoder_bench [--model NAME|DIR] [--compute-type T] [--threads N] [--steps N] [--rounds N]
                     [--prompt N]

options:
  --model NAME|DIR     model name (tiny.en, base) or directory [default: base]
  --compute-type T     auto, f32, int8, bf16 or int8-bf16 [default: auto]
  --threads N          worker threads, 0 = one per core [default: 0]
  --steps N            single-token steps per round [default: 100]
  --rounds N           rounds (fresh window and prompt each) [default: 10]
  --prompt N           previous-text tokens in the prompt, as with condition on previous text
                       [default: 0]";

fn fail(msg: &str) -> ! {
    eprintln!("decoder_bench: {msg}\n\n{USAGE}");
    std::process::exit(2)
}

fn main() {
    let mut model_name = "base".to_string();
    let mut compute = ComputeType::Auto;
    let mut threads = 0usize;
    let mut steps = 100usize;
    let mut rounds = 10usize;
    let mut previous = 0usize;
    // A whole number of at least `min` for `flag`, or exit 2 naming the flag.
    let number = |flag: &str, min: usize, v: String| -> usize {
        common::parse_number::<usize>(flag, &v)
            .ok()
            .filter(|&n| n >= min)
            .unwrap_or_else(|| fail(&format!("{flag} takes a whole number >= {min}")))
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--model" => model_name = value("--model"),
            "--compute-type" => {
                compute = value("--compute-type")
                    .parse()
                    .unwrap_or_else(|e: String| fail(&e))
            }
            "--threads" => threads = number("--threads", 0, value("--threads")),
            "--steps" => steps = number("--steps", 1, value("--steps")),
            "--rounds" => rounds = number("--rounds", 1, value("--rounds")),
            "--prompt" => previous = number("--prompt", 0, value("--prompt")),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    if threads == 0 {
        threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    let opts = LoadOptions {
        compute_type: compute,
        ..LoadOptions::default()
    };
    let model = engine::load_shared_opts(&model_name, &opts).unwrap_or_else(|e| {
        eprintln!("decoder_bench: {e}");
        std::process::exit(1)
    });
    let dims = model.dims.clone();
    let max_steps = dims.n_text_ctx / 2 - 4;
    if steps > max_steps {
        fail(&format!("--steps: at most {max_steps} for this model"));
    }
    if previous > dims.n_text_ctx / 2 - 1 {
        fail(&format!(
            "--prompt: at most {} for this model",
            dims.n_text_ctx / 2 - 1
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("whispernpu-{i}"))
        .build()
        .unwrap_or_else(|e| {
            eprintln!("decoder_bench: thread pool: {e}");
            std::process::exit(1)
        });
    let cpu = common::cpu_model();
    let mut decoder = model.new_decoder(1);
    let specials = &model.tokenizer.specials;
    // [sot_prev, previous text..., sot, language, transcribe, no_timestamps] as a conditioned
    // window's prompt (without previous text: from sot on).
    let mut prompt = Vec::new();
    if previous > 0 {
        prompt.push(specials.sot_prev);
        prompt.extend((0..previous).map(|i| (500 + 53 * i) as u32 % specials.eot));
    }
    prompt.extend([
        specials.sot,
        specials.sot + 1,
        specials.transcribe,
        specials.no_timestamps,
    ]);
    let mut prompt_times = Vec::with_capacity(rounds);
    let n = dims.n_audio_ctx * dims.n_audio_state;
    let mut times = Vec::with_capacity(rounds * steps);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut encoder_out = vec![0.0f32; n];
    for round in 0..rounds {
        for v in encoder_out.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *v = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0;
        }
        pool.install(|| -> Result<(), gstwhispernpu::error::Error> {
            decoder.set_audio(&encoder_out, threads)?;
            decoder.reset(1);
            let t = Instant::now();
            decoder.forward(&prompt, None, threads)?;
            prompt_times.push(t.elapsed().as_secs_f64());
            decoder.set_screening(Some(specials.timestamp_begin as usize));
            for i in 0..steps {
                // Ordinary text tokens, a different one each step.
                let token = (1000 + 37 * (i + round)) as u32 % specials.eot;
                let t = Instant::now();
                decoder.forward(&[token], None, threads)?;
                let mut row = decoder.logits_row(0).to_vec();
                decoder.refine(0, &mut row);
                times.push(t.elapsed().as_secs_f64());
            }
            decoder.set_screening(None);
            Ok(())
        })
        .unwrap_or_else(|e| {
            eprintln!("decoder_bench: {e}");
            std::process::exit(1)
        });
    }
    times.sort_by(f64::total_cmp);
    prompt_times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize] * 1e3;
    println!("cpu              {cpu}");
    println!(
        "model            {model_name} ({})",
        model.engine_description()
    );
    println!("threads          {threads}");
    println!(
        "steps            {} ({rounds} rounds x {steps})",
        times.len()
    );
    println!(
        "ms/step          median {:.3}  p10 {:.3}  p90 {:.3}",
        at(0.5),
        at(0.1),
        at(0.9)
    );
    println!(
        "prompt ms        median {:.2}  ({} tokens)",
        prompt_times[prompt_times.len() / 2] * 1e3,
        prompt.len()
    );
}
