//! The synthetic task suite of the CPU quickstart (see pipelines/README.md).
//!
//! Every task maps a short sequence of letters to another sequence (or a number word)
//! with one skill, announced by instruction words of its own. Held-out tasks never
//! appear in any expert's training data: they compose two skills ("reverse the order then
//! advance each letter") or phrase a known skill with new words ("arrange letters
//! alphabetically"). A model can only solve them by using the right expert for the right
//! tokens, which is what PHATGOOSE's tokenwise routing is for.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::example::Example;

pub const LETTERS: [&str; 16] = [
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
];
const NUMBERS: [&str; 8] = ["zero", "one", "two", "three", "four", "five", "six", "seven"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skill {
    Reverse,
    Sort,
    Shift,
    Dedup,
    EveryOther,
    Count,
}

#[derive(Debug, Clone, Copy)]
pub struct TaskDef {
    pub id: &'static str,
    pub instruction: &'static str,
    pub skills: &'static [Skill],
    pub held_out: bool,
    pub description: &'static str,
}

pub const TASKS: &[TaskDef] = &[
    TaskDef {
        id: "reverse",
        instruction: "reverse the order :",
        skills: &[Skill::Reverse],
        held_out: false,
        description: "the letters in reverse order",
    },
    TaskDef {
        id: "sort",
        instruction: "sort alphabetically :",
        skills: &[Skill::Sort],
        held_out: false,
        description: "the letters sorted",
    },
    TaskDef {
        id: "shift",
        instruction: "advance each letter :",
        skills: &[Skill::Shift],
        held_out: false,
        description: "each letter replaced by the next one (p wraps to a)",
    },
    TaskDef {
        id: "dedup",
        instruction: "drop repeated letters :",
        skills: &[Skill::Dedup],
        held_out: false,
        description: "runs of a repeated letter collapsed to one",
    },
    TaskDef {
        id: "every-other",
        instruction: "keep odd positions :",
        skills: &[Skill::EveryOther],
        held_out: false,
        description: "the 1st, 3rd, 5th ... letters",
    },
    TaskDef {
        id: "count",
        instruction: "how many letters :",
        skills: &[Skill::Count],
        held_out: false,
        description: "the number of letters, as a word",
    },
    TaskDef {
        id: "reverse-shift",
        instruction: "reverse the order then advance each letter :",
        skills: &[Skill::Reverse, Skill::Shift],
        held_out: true,
        description: "composition: reverse, then shift",
    },
    TaskDef {
        id: "sort-dedup",
        instruction: "sort alphabetically then drop repeated letters :",
        skills: &[Skill::Sort, Skill::Dedup],
        held_out: true,
        description: "composition: sort, then deduplicate",
    },
    TaskDef {
        id: "arrange",
        instruction: "arrange letters alphabetically :",
        skills: &[Skill::Sort],
        held_out: true,
        description: "sorting, asked with new words",
    },
    // The study's further held-out tasks (pipelines/README.md, "The study"): designed
    // before any result of the study was seen.
    TaskDef {
        id: "shift-reverse",
        instruction: "advance each letter then reverse the order :",
        skills: &[Skill::Shift, Skill::Reverse],
        held_out: true,
        description: "composition: shift, then reverse",
    },
    TaskDef {
        id: "dedup-count",
        instruction: "drop repeated letters then how many letters :",
        skills: &[Skill::Dedup, Skill::Count],
        held_out: true,
        description: "composition: deduplicate, then count",
    },
    TaskDef {
        id: "backwards",
        instruction: "write the letters backwards :",
        skills: &[Skill::Reverse],
        held_out: true,
        description: "reversing, asked with new words",
    },
];

/// The pretraining corpus's pseudo task id.
pub const CORPUS: &str = "corpus";
/// A pretraining corpus with topical structure (experimental).
pub const TOPIC_CORPUS: &str = "topic-corpus";

pub fn task(id: &str) -> Option<&'static TaskDef> {
    TASKS.iter().find(|t| t.id == id)
}

/// Whether task `id` asks nothing of its own on one letter: a sequence of one letter
/// repeated reads the same reversed or sorted, and deduplicates to one letter, so a
/// task with one of those skills answers as others do. (Shift, every-other and count
/// still depend on the letter or the length; corpora are not tasks.)
pub fn collapses_on_one_letter(id: &str) -> bool {
    task(id).is_some_and(|t| {
        t.skills
            .iter()
            .any(|s| matches!(s, Skill::Reverse | Skill::Sort | Skill::Dedup))
    })
}

pub fn task_ids() -> Vec<&'static str> {
    TASKS.iter().map(|t| t.id).chain([CORPUS, TOPIC_CORPUS]).collect()
}

fn apply(skill: Skill, seq: &[&'static str]) -> Vec<&'static str> {
    match skill {
        Skill::Reverse => seq.iter().rev().copied().collect(),
        Skill::Sort => {
            let mut s = seq.to_vec();
            s.sort();
            s
        }
        Skill::Shift => seq
            .iter()
            .map(|l| {
                let i = LETTERS.iter().position(|x| x == l).expect("letters only");
                LETTERS[(i + 1) % LETTERS.len()]
            })
            .collect(),
        Skill::Dedup => {
            let mut s: Vec<&'static str> = seq.to_vec();
            s.dedup();
            s
        }
        Skill::EveryOther => seq.iter().step_by(2).copied().collect(),
        Skill::Count => vec![NUMBERS[seq.len().min(NUMBERS.len() - 1)]],
    }
}

fn run(skills: &[Skill], seq: &[&'static str]) -> Vec<&'static str> {
    let mut cur = seq.to_vec();
    for s in skills {
        cur = apply(*s, &cur);
    }
    cur
}

/// A random letter sequence; with `repeats`, at least one letter is doubled in place so
/// deduplication has something to do.
fn sequence(rng: &mut ChaCha8Rng, repeats: bool, letters: &[&'static str]) -> Vec<&'static str> {
    let n = rng.random_range(3..=6);
    let mut s: Vec<&'static str> = (0..n)
        .map(|_| letters[rng.random_range(0..letters.len())])
        .collect();
    if repeats {
        let i = rng.random_range(0..s.len());
        s.insert(i, s[i]);
    }
    s
}

/// Derives the seed of one split, so splits never share examples by construction of
/// the stream (and the same seed always gives the same split).
fn split_seed(seed: u64, split: &str) -> u64 {
    let h = blake3::hash(format!("goosepipe-synthetic/{seed}/{split}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// `n` examples of task `id` for `split`. `choice` adds answer choices: the correct
/// output plus the outputs of other skills on the same letters, so picking the wrong
/// expert picks a plausible wrong answer.
pub fn generate(id: &str, split: &str, n: usize, seed: u64, choice: bool) -> Option<Vec<Example>> {
    generate_from(id, split, n, seed, choice, &LETTERS)
}

/// The letters a `synthetic letters="..."` setting names, each one of the suite's.
pub fn parse_letters(spec: &str) -> Result<Vec<&'static str>, String> {
    let mut out: Vec<&'static str> = vec![];
    for c in spec.chars() {
        let l = LETTERS
            .iter()
            .find(|l| l.starts_with(c))
            .ok_or_else(|| format!("'{c}' is not a letter of the suite (a to p)"))?;
        if !out.contains(l) {
            out.push(l);
        }
    }
    if out.is_empty() {
        return Err("no letters given".into());
    }
    Ok(out)
}

/// [`generate`], drawing the letter sequences from `letters` only (a task whose
/// inputs have content of their own, as real datasets do).
pub fn generate_from(
    id: &str,
    split: &str,
    n: usize,
    seed: u64,
    choice: bool,
    letters: &[&'static str],
) -> Option<Vec<Example>> {
    let mut rng = ChaCha8Rng::seed_from_u64(split_seed(seed, split));
    if id == CORPUS {
        return Some((0..n).map(|_| corpus_line(&mut rng)).collect());
    }
    if id == TOPIC_CORPUS {
        let topics = topics();
        return Some((0..n).map(|_| topic_line(&mut rng, &topics)).collect());
    }
    let t = task(id)?;
    let repeats = t.skills.contains(&Skill::Dedup);
    let out = (0..n)
        .map(|_| {
            let seq = sequence(&mut rng, repeats, letters);
            let target = run(t.skills, &seq).join(" ");
            let input = format!("{} {}", t.instruction, seq.join(" "));
            let choices = if choice {
                choices_for(&mut rng, t, &seq, &target)
            } else {
                vec![]
            };
            Example {
                input,
                target,
                choices,
                answers: vec![],
            }
        })
        .collect();
    Some(out)
}

fn choices_for(rng: &mut ChaCha8Rng, t: &TaskDef, seq: &[&'static str], target: &str) -> Vec<String> {
    let mut cands: Vec<String> = vec![target.to_string()];
    let push = |c: String, cands: &mut Vec<String>| {
        if !cands.contains(&c) {
            cands.push(c);
        }
    };
    if t.skills.last() == Some(&Skill::Count) {
        for w in NUMBERS.iter().skip(2) {
            push(w.to_string(), &mut cands);
        }
    } else {
        let singles = [
            Skill::Reverse,
            Skill::Sort,
            Skill::Shift,
            Skill::Dedup,
            Skill::EveryOther,
        ];
        for s in singles {
            push(apply(s, seq).join(" "), &mut cands);
        }
        push(seq.join(" "), &mut cands);
        for s in singles {
            for s2 in singles {
                push(run(&[s, s2], seq).join(" "), &mut cands);
            }
        }
    }
    let mut wrong: Vec<String> = cands.split_off(1);
    wrong.shuffle(rng);
    wrong.truncate(3);
    let mut all = cands;
    all.extend(wrong);
    all.shuffle(rng);
    all
}

/// Every word any task or the corpus uses: the base model's vocabulary.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = LETTERS
        .iter()
        .chain(NUMBERS.iter())
        .map(|s| s.to_string())
        .collect();
    for t in TASKS {
        for w in t.instruction.split_whitespace() {
            words.push(w.to_string());
        }
    }
    words.sort();
    words.dedup();
    words
}

/// Topics of the topical corpus: each a weight per vocabulary word, sparse (a third
/// of the words), drawn from a fixed seed (part of the suite's definition).
fn topics() -> Vec<Vec<f64>> {
    let vocab = vocabulary();
    let mut rng = ChaCha8Rng::seed_from_u64(0x7091c5);
    (0..8)
        .map(|_| {
            vocab
                .iter()
                .map(|_| {
                    if rng.random_bool(0.33) {
                        rng.random_range(0.2..1.0)
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect()
}

/// A line of one or two topics' words: which words occur together depends on the
/// line's topics, as in real text, so infilling it rewards reading the context.
fn topic_line(rng: &mut ChaCha8Rng, topics: &[Vec<f64>]) -> Example {
    let vocab = vocabulary();
    let a = rng.random_range(0..topics.len());
    let b = rng.random_range(0..topics.len());
    let n = rng.random_range(8..=16);
    let words: Vec<&str> = (0..n)
        .map(|_| {
            let t = &topics[if rng.random_bool(0.5) { a } else { b }];
            let total: f64 = t.iter().sum();
            let mut x = rng.random_range(0.0..total);
            let mut pick = 0;
            for (i, w) in t.iter().enumerate() {
                if x < *w {
                    pick = i;
                    break;
                }
                x -= w;
            }
            vocab[pick].as_str()
        })
        .collect();
    Example {
        input: words.join(" "),
        target: String::new(),
        choices: vec![],
        answers: vec![],
    }
}

/// Pretraining text: random runs of every word of the vocabulary, with no task
/// structure, so the base learns the tokens but none of the skills.
fn corpus_line(rng: &mut ChaCha8Rng) -> Example {
    let vocab = vocabulary();
    let n = rng.random_range(8..=16);
    let words: Vec<&str> = (0..n)
        .map(|_| {
            // Letters dominate, as in the tasks.
            if rng.random_bool(0.6) {
                LETTERS[rng.random_range(0..LETTERS.len())]
            } else {
                vocab[rng.random_range(0..vocab.len())].as_str()
            }
        })
        .collect();
    Example {
        input: words.join(" "),
        target: String::new(),
        choices: vec![],
        answers: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: &str) -> Example {
        generate(id, "train", 1, 7, true).unwrap().remove(0)
    }

    #[test]
    fn skills_do_what_they_say() {
        let s = ["c", "a", "a", "p"];
        assert_eq!(apply(Skill::Reverse, &s), ["p", "a", "a", "c"]);
        assert_eq!(apply(Skill::Sort, &s), ["a", "a", "c", "p"]);
        assert_eq!(apply(Skill::Shift, &s), ["d", "b", "b", "a"]);
        assert_eq!(apply(Skill::Dedup, &s), ["c", "a", "p"]);
        assert_eq!(apply(Skill::EveryOther, &s), ["c", "a"]);
        assert_eq!(apply(Skill::Count, &s), ["four"]);
        assert_eq!(run(&[Skill::Reverse, Skill::Shift], &s), ["a", "b", "b", "d"]);
    }

    #[test]
    fn examples_are_deterministic_and_well_formed() {
        assert_eq!(
            generate("sort", "train", 50, 1, true),
            generate("sort", "train", 50, 1, true)
        );
        assert_ne!(
            generate("sort", "train", 50, 1, false),
            generate("sort", "validation", 50, 1, false)
        );
        for t in TASKS {
            let e = ex(t.id);
            assert!(e.input.starts_with(t.instruction));
            assert_eq!(
                e.answer_index().map(|i| e.choices[i].clone()),
                Some(e.target.clone())
            );
            assert!(e.choices.len() >= 2, "{e:?}");
        }
        assert!(generate("nope", "train", 1, 0, false).is_none());
    }

    #[test]
    fn held_out_instructions_are_never_a_held_in_instruction() {
        for h in TASKS.iter().filter(|t| t.held_out) {
            assert!(
                TASKS
                    .iter()
                    .filter(|t| !t.held_out)
                    .all(|t| t.instruction != h.instruction)
            );
        }
        // ...but every held-out word is in the vocabulary the base is pretrained on.
        let v = vocabulary();
        for w in TASKS.iter().flat_map(|t| t.instruction.split_whitespace()) {
            assert!(v.iter().any(|x| x == w));
        }
    }
}
