//! Words a tokenizer cannot read. A word outside a tokenizer's vocabulary becomes its
//! unknown token (`<unk>`), so "Sort" and "last" read the same to the model: an
//! expert cannot learn an instruction made of them, and answer choices made of them
//! tie. Nothing fails; the numbers are wrong. This counts them, with the words, so
//! that a run can say so.

use std::collections::BTreeMap;

use tokenizers::Tokenizer;

/// The unknown token's id, when the tokenizer has one by the usual name.
pub fn unknown_id(tok: &Tokenizer) -> Option<u32> {
    tok.token_to_id("<unk>")
}

/// Unknown tokens among the tokens counted, and the text each stood for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UnknownWords {
    pub tokens: u64,
    pub unknown: u64,
    /// The text under each unknown token -> how often.
    pub words: BTreeMap<String, u64>,
}

impl UnknownWords {
    /// Counts `text`, whose token ids are `ids`; the text is tokenized again (for the
    /// words' offsets) only when an id is unknown.
    pub fn count(&mut self, tok: &Tokenizer, unk: u32, text: &str, ids: &[u32]) {
        self.tokens += ids.len() as u64;
        if !ids.contains(&unk) {
            return;
        }
        let Ok(enc) = tok.encode(text, false) else {
            return;
        };
        for (id, (from, to)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            if *id == unk {
                self.unknown += 1;
                let word = text.get(*from..*to).unwrap_or("").to_string();
                *self.words.entry(word).or_default() += 1;
            }
        }
    }

    pub fn merge(&mut self, other: UnknownWords) {
        self.tokens += other.tokens;
        self.unknown += other.unknown;
        for (w, n) in other.words {
            *self.words.entry(w).or_default() += n;
        }
    }

    pub fn share(&self) -> f64 {
        self.unknown as f64 / self.tokens.max(1) as f64
    }

    /// "2.5% of 1200 tokens are <unk>: "Sort" 20, "last" 10", the `n` most common
    /// words first; None when none is unknown.
    pub fn describe(&self, n: usize) -> Option<String> {
        if self.unknown == 0 {
            return None;
        }
        let mut words: Vec<(&String, &u64)> = self.words.iter().collect();
        words.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut shown: Vec<String> = words.iter().take(n).map(|(w, c)| format!("{w:?} {c}")).collect();
        if words.len() > n {
            shown.push(format!("{} more words", words.len() - n));
        }
        Some(format!(
            "{} of {} tokens ({:.1}%) are <unk>, words its tokenizer does not know: {}",
            self.unknown,
            self.tokens,
            100.0 * self.share(),
            shown.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_words_under_unknown_tokens() {
        let tok = crate::data::tokenizer::train_word_level(&["sort the letters : a b c".to_string()], 100, 0)
            .unwrap();
        let unk = unknown_id(&tok).unwrap();
        let mut u = UnknownWords::default();
        for text in [
            "sort the letters : a b c",
            "Sort the last letters : a b",
            "Sort : a",
        ] {
            let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
            u.count(&tok, unk, text, &ids);
        }
        assert_eq!(u.unknown, 3);
        assert_eq!(
            u.words,
            BTreeMap::from([("Sort".to_string(), 2), ("last".to_string(), 1)])
        );
        let said = u.describe(1).unwrap();
        assert!(said.starts_with("3 of "), "{said}");
        assert!(
            said.ends_with("words its tokenizer does not know: \"Sort\" 2, 1 more words"),
            "{said}"
        );
        assert_eq!(UnknownWords::default().describe(5), None);
    }
}
