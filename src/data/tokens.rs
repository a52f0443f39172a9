//! Tokenized examples on disk: one safetensors file holding, per split, the input and
//! target token ids of every example as flat u32 arrays plus u64 offsets. Written once
//! per (dataset, tokenizer) by the `tokenize` step and memory-read by every expert,
//! gate and baseline trained on that dataset, so no step re-tokenizes another's data.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::example::DataError;

/// Token ids of one example: the input, and the target (ending with EOS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
}

fn flat(seqs: impl Iterator<Item = Vec<u32>>) -> (Vec<u8>, Vec<u8>, usize, usize) {
    let (mut ids, mut offs) = (Vec::new(), vec![0u8; 8]);
    let (mut n_ids, mut n) = (0usize, 0usize);
    for s in seqs {
        for t in &s {
            ids.extend_from_slice(&t.to_le_bytes());
        }
        n_ids += s.len();
        n += 1;
        offs.extend_from_slice(&(n_ids as u64).to_le_bytes());
    }
    (ids, offs, n_ids, n + 1)
}

/// The answer choices of one example, as token ids without EOS, and which choices are
/// right (what a trainer's validation needs to measure rank-classification accuracy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChoices {
    pub choices: Vec<Vec<u32>>,
    pub right: Vec<bool>,
}

fn u64s(xs: impl Iterator<Item = u64>) -> (Vec<u8>, usize) {
    let mut n = 0;
    let b = xs
        .flat_map(|x| {
            n += 1;
            x.to_le_bytes()
        })
        .collect();
    (b, n)
}

/// Writes `splits` (name -> pairs) to `path`, with the answer choices of the splits in
/// `choices` (name -> one entry per pair) when there are any.
pub fn write(
    path: &Path,
    splits: &BTreeMap<String, Vec<TokenPair>>,
    choices: &BTreeMap<String, Vec<TokenChoices>>,
) -> Result<(), DataError> {
    let mut bufs: Vec<(String, Dtype, usize, Vec<u8>)> = vec![];
    for (name, items) in choices {
        // Choice sequences flat; per example its number of choices; per choice 1 if right.
        let (ids, offs, n_ids, n_offs) = flat(items.iter().flat_map(|c| c.choices.clone()));
        bufs.push((format!("{name}.choice.ids"), Dtype::U32, n_ids, ids));
        bufs.push((format!("{name}.choice.offsets"), Dtype::U64, n_offs, offs));
        let (counts, n) = u64s(items.iter().map(|c| c.choices.len() as u64));
        bufs.push((format!("{name}.choice.counts"), Dtype::U64, n, counts));
        let (right, n) = u64s(items.iter().flat_map(|c| c.right.iter().map(|&r| r as u64)));
        bufs.push((format!("{name}.choice.right"), Dtype::U64, n, right));
    }
    for (name, pairs) in splits {
        for (part, seqs) in [
            ("input", pairs.iter().map(|p| p.input.clone()).collect::<Vec<_>>()),
            (
                "target",
                pairs.iter().map(|p| p.target.clone()).collect::<Vec<_>>(),
            ),
        ] {
            let (ids, offs, n_ids, n_offs) = flat(seqs.into_iter());
            bufs.push((format!("{name}.{part}.ids"), Dtype::U32, n_ids, ids));
            bufs.push((format!("{name}.{part}.offsets"), Dtype::U64, n_offs, offs));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, len, b)| {
            TensorView::new(*d, vec![*len], b)
                .map(|v| (n.clone(), v))
                .map_err(|e| DataError::Other(format!("{}: {e}", path.display())))
        })
        .collect::<Result<_, _>>()?;
    // Serialized, then written as every artifact file is: `serialize_to_file` makes
    // its file through a private temporary (mode 0600, whatever the umask), which
    // other users of a shared store then could not read.
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| DataError::Other(format!("{}: {e}", path.display())))?;
    std::fs::write(path, bytes).map_err(|e| DataError::Other(format!("{}: {e}", path.display())))
}

fn seqs(st: &SafeTensors<'_>, name: &str, file: &Path) -> Result<Vec<Vec<u32>>, DataError> {
    let bad = |what: String| DataError::Other(format!("{}: {what}", file.display()));
    let get = |n: String| st.tensor(&n).map_err(|e| bad(format!("{n}: {e}")));
    let ids_t = get(format!("{name}.ids"))?;
    let offs_t = get(format!("{name}.offsets"))?;
    if ids_t.dtype() != Dtype::U32 || offs_t.dtype() != Dtype::U64 {
        return Err(bad(format!("{name}: unexpected dtypes")));
    }
    let ids: Vec<u32> = ids_t
        .data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
        .collect();
    let offs: Vec<usize> = offs_t
        .data()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as usize)
        .collect();
    offs.windows(2)
        .map(|w| {
            ids.get(w[0]..w[1])
                .map(<[u32]>::to_vec)
                .ok_or_else(|| bad(format!("{name}: offsets out of range")))
        })
        .collect()
}

fn u64_vec(st: &SafeTensors<'_>, name: &str, file: &Path) -> Result<Vec<u64>, DataError> {
    let t = st
        .tensor(name)
        .map_err(|e| DataError::Other(format!("{}: {name}: {e}", file.display())))?;
    if t.dtype() != Dtype::U64 {
        return Err(DataError::Other(format!(
            "{}: {name}: unexpected dtype",
            file.display()
        )));
    }
    Ok(t.data()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

/// The answer choices of a split written by [`write`], one entry per pair; None when
/// the split has none (generation data, or a file written before choices were kept).
pub fn read_choices(path: &Path, split: &str) -> Result<Option<Vec<TokenChoices>>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| DataError::Other(format!("{}: not a token file: {e}", path.display())))?;
    if st.tensor(&format!("{split}.choice.counts")).is_err() {
        return Ok(None);
    }
    let all = seqs(&st, &format!("{split}.choice"), path)?;
    let counts = u64_vec(&st, &format!("{split}.choice.counts"), path)?;
    let right = u64_vec(&st, &format!("{split}.choice.right"), path)?;
    if counts.iter().sum::<u64>() as usize != all.len() || right.len() != all.len() {
        return Err(DataError::Other(format!(
            "{}: {split}: choice counts do not add up",
            path.display()
        )));
    }
    let (mut out, mut at) = (vec![], 0usize);
    for c in counts {
        let range = at..at + c as usize;
        out.push(TokenChoices {
            choices: all[range.clone()].to_vec(),
            right: right[range.clone()].iter().map(|&r| r != 0).collect(),
        });
        at = range.end;
    }
    Ok(Some(out))
}

/// Reads one split written by [`write`].
pub fn read(path: &Path, split: &str) -> Result<Vec<TokenPair>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| DataError::Other(format!("{}: not a token file: {e}", path.display())))?;
    let inputs = seqs(&st, &format!("{split}.input"), path)?;
    let targets = seqs(&st, &format!("{split}.target"), path)?;
    if inputs.len() != targets.len() {
        return Err(DataError::Other(format!(
            "{}: {split}: input and target counts differ",
            path.display()
        )));
    }
    Ok(inputs
        .into_iter()
        .zip(targets)
        .map(|(input, target)| TokenPair { input, target })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("tokens.safetensors");
        let mut m = BTreeMap::new();
        let a = vec![
            TokenPair {
                input: vec![5, 6, 1],
                target: vec![7, 1],
            },
            TokenPair {
                input: vec![],
                target: vec![1],
            },
        ];
        m.insert("train".to_string(), a.clone());
        m.insert("validation".to_string(), vec![]);
        let c = vec![
            TokenChoices {
                choices: vec![vec![7], vec![8, 9]],
                right: vec![true, false],
            },
            TokenChoices {
                choices: vec![],
                right: vec![],
            },
        ];
        write(&f, &m, &BTreeMap::from([("train".to_string(), c.clone())])).unwrap();
        assert_eq!(read(&f, "train").unwrap(), a);
        assert!(read(&f, "validation").unwrap().is_empty());
        assert!(read(&f, "test").is_err());
        assert_eq!(read_choices(&f, "train").unwrap(), Some(c));
        assert_eq!(read_choices(&f, "validation").unwrap(), None);
        // Made with the mode of every other artifact file (the umask's), not 0600:
        // a shared store's other users read it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let sibling = t.path().join("sibling");
            std::fs::write(&sibling, b"x").unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&f), mode(&sibling));
        }
    }
}
