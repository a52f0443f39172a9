//! The `tokenize` step: a dataset's training and validation examples as token ids of
//! one model's tokenizer, untruncated (each trainer truncates to its own limits).
//! One per (dataset, tokenizer): every expert, gate and multitask baseline trained on
//! the dataset reads it, so adding an expert never re-tokenizes another one's data.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::common::{encode, examples, fail, load_tokenizer_and_eos};
use crate::data::Example;
use crate::data::tokens::{self, TokenChoices, TokenPair};
use crate::data::unknown_words::{UnknownWords, unknown_id};
use crate::exec::{InputArtifact, JobDefaults, Kind, StepContext, StepError, StepRunner};

/// One per (dataset, model tokenizer): token ids for every trainer of that dataset.
pub const KIND: Kind = Kind::new("tokenize", 2, 2, JobDefaults::new(0, 2, "8G", "2:00:00")).exact();

pub struct TokenizeStep;

/// The share of unknown tokens from which a run says so: real tokenizers leave a few
/// rare characters unknown.
pub(super) const UNKNOWN_SAID: f64 = 0.001;

pub use crate::artifact_files::TOKENS;

fn encode_all(tok: &tokenizers::Tokenizer, ex: &[Example], eos: u32) -> Result<Vec<TokenPair>, StepError> {
    ex.par_iter()
        .map(|e| {
            let mut target = encode(tok, &e.target)?;
            if target.last() != Some(&eos) {
                target.push(eos);
            }
            Ok(TokenPair {
                input: encode(tok, &e.input)?,
                target,
            })
        })
        .collect()
}

impl StepRunner for TokenizeStep {
    fn kind(&self) -> &'static str {
        "tokenize"
    }
    fn run(&self, ctx: &StepContext) -> Result<(), StepError> {
        let (tok, eos) = load_tokenizer_and_eos(ctx.input("model")?)?;
        let (train, valid) = examples(ctx.input("data")?)?;
        ctx.progress
            .log(&format!("tokenizing {} + {} examples", train.len(), valid.len()));
        let mut splits = BTreeMap::new();
        splits.insert("train".to_string(), encode_all(&tok, &train, eos)?);
        splits.insert("validation".to_string(), encode_all(&tok, &valid, eos)?);
        if let Some(unk) = unknown_id(&tok) {
            let mut u = UnknownWords::default();
            for (ex, pairs) in [(&train, &splits["train"]), (&valid, &splits["validation"])] {
                for (e, p) in ex.iter().zip(pairs) {
                    u.count(&tok, unk, &e.input, &p.input);
                    u.count(&tok, unk, &e.target, &p.target);
                }
            }
            if u.share() >= UNKNOWN_SAID
                && let Some(said) = u.describe(8)
            {
                let data = ctx.input("data")?.id.clone();
                ctx.progress.log(&format!(
                    "warning: {data}: {said}; the model reads each as the same token (a tokenizer goosepipe trains, `model ... {{ init corpus=... }}`, knows the words of its corpus; a hub model's tokenizer is fixed: reword the data)"
                ));
            }
        }
        // Validation choices let trainers keep the checkpoint with the best accuracy.
        let mut choices = BTreeMap::new();
        if valid.iter().any(|e| !e.choices.is_empty()) {
            choices.insert("validation".to_string(), encode_choices(&tok, &valid, eos)?);
        }
        tokens::write(&ctx.out.join(TOKENS), &splits, &choices).map_err(fail)
    }
}

/// Every example's choices as token ids without EOS (scoring appends it), and which
/// are right.
fn encode_choices(
    tok: &tokenizers::Tokenizer,
    ex: &[Example],
    eos: u32,
) -> Result<Vec<TokenChoices>, StepError> {
    ex.par_iter()
        .map(|e| {
            let choices = super::common::encode_choices(tok, &e.choices, eos)?;
            Ok(TokenChoices {
                right: (0..choices.len()).map(|i| e.choice_is_right(i)).collect(),
                choices,
            })
        })
        .collect()
}

/// The validation split's answer choices, one entry per validation pair, if it has any.
pub fn read_validation_choices(input: &InputArtifact) -> Result<Option<Vec<TokenChoices>>, StepError> {
    tokens::read_choices(&input.files.join(TOKENS), "validation").map_err(fail)
}

/// The training and validation pairs of a `tokenize` artifact.
pub fn read_tokens(input: &InputArtifact) -> Result<(Vec<TokenPair>, Vec<TokenPair>), StepError> {
    let f = input.files.join(TOKENS);
    Ok((
        tokens::read(&f, "train").map_err(fail)?,
        tokens::read(&f, "validation").map_err(fail)?,
    ))
}
