//! Training a word-level tokenizer for a pipeline-built base model.
//!
//! The quickstart's vocabulary is small and closed, so a word-level model is exact (no
//! unknown pieces) and fast. The result is a real `tokenizer.json` (tokenizers crate)
//! with T5's conventions: `<pad>` = 0, `</s>` = 1, `<unk>` = 2, `</s>` appended to every
//! encoding, and `<extra_id_N>` sentinels at the end of the vocabulary for span
//! corruption.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::example::DataError;

pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";

pub fn sentinel(i: usize) -> String {
    format!("<extra_id_{i}>")
}

fn err(e: impl std::fmt::Display) -> DataError {
    DataError::Other(format!("tokenizer: {e}"))
}

/// Trains on `texts`: the `max_words` most frequent words (ties broken alphabetically,
/// so the result is deterministic), then `sentinels` sentinel tokens.
pub fn train_word_level(
    texts: &[String],
    max_words: usize,
    sentinels: usize,
) -> Result<Tokenizer, DataError> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in texts {
        for w in t.split_whitespace() {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut words: Vec<(&str, usize)> = counts.into_iter().collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    words.truncate(max_words);
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for (i, s) in [PAD, EOS, UNK].iter().enumerate() {
        vocab.insert(s.to_string(), i as u32);
    }
    for (w, _) in &words {
        let id = vocab.len() as u32;
        vocab.entry(w.to_string()).or_insert(id);
    }
    for i in 0..sentinels {
        let id = vocab.len() as u32;
        vocab.insert(sentinel(i), id);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(UNK.into())
        .build()
        .map_err(err)?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(WhitespaceSplit));
    let post = TemplateProcessing::builder()
        .try_single(format!("$A:0 {EOS}:0"))
        .map_err(err)?
        .special_tokens(vec![(EOS, 1)])
        .build()
        .map_err(err)?;
    tok.with_post_processor(Some(post));
    let specials: Vec<AddedToken> = [PAD.to_string(), EOS.to_string(), UNK.to_string()]
        .into_iter()
        .chain((0..sentinels).map(sentinel))
        .map(|s| AddedToken::from(s, true))
        .collect();
    tok.add_special_tokens(specials).map_err(err)?;
    Ok(tok)
}

pub fn save(tok: &Tokenizer, path: &Path) -> Result<(), DataError> {
    tok.save(path, true).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t5_conventions_and_round_trip() {
        let texts = vec!["reverse the order : a b c".to_string(), "a b b".to_string()];
        let tok = train_word_level(&texts, 100, 4).unwrap();
        let enc = tok.encode("reverse the order : a b", true).unwrap();
        assert_eq!(*enc.get_ids().last().unwrap(), 1, "</s> appended");
        assert_eq!(tok.token_to_id(PAD), Some(0));
        assert_eq!(tok.token_to_id(UNK), Some(2));
        assert_eq!(tok.token_to_id("b"), Some(3), "most frequent word first");
        let s3 = tok.token_to_id(&sentinel(3)).unwrap();
        assert_eq!(s3 as usize, tok.get_vocab_size(true) - 1, "sentinels last");
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("tokenizer.json");
        save(&tok, &p).unwrap();
        let back = Tokenizer::from_file(&p).unwrap();
        // a, b, an unknown word, then </s>.
        assert_eq!(back.encode("a b zzz", true).unwrap().get_ids(), &[4, 3, 2, 1]);
    }
}
