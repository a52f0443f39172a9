//! Where named tensors come from: memory-mapped safetensors (one file or
//! shards), a PyTorch pickle, or an in-memory map (random init, tests). Every
//! lookup checks the shape so that a wrong checkpoint fails with the tensor name.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::model::error::{ModelError, Result, without_backtrace};

/// The first element of `t` that is NaN or infinite, with its index, if any (read on
/// the host as f32).
pub fn first_non_finite(t: &Tensor) -> Result<Option<(usize, f32)>> {
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(values.into_iter().enumerate().find(|(_, v)| !v.is_finite()))
}

pub enum TensorStore {
    Mmap {
        label: String,
        st: MmapedSafetensors,
        names: HashSet<String>,
    },
    Memory {
        label: String,
        tensors: HashMap<String, Tensor>,
    },
}

impl TensorStore {
    /// Memory-maps one or more safetensors files (shards). The files must not be
    /// modified while the store lives; goosepipe only maps files it treats as
    /// immutable (HF cache blobs, published artifacts).
    pub fn mmap(paths: &[PathBuf]) -> Result<Self> {
        let label = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for p in paths {
            crate::file_kind::regular_file(p).map_err(|e| ModelError::io(p, e))?;
        }
        // SAFETY: see the doc comment; the mapping is read-only.
        let st = unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| ModelError::BadFile {
            file: label.clone(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(TensorStore::Mmap { label, st, names })
    }

    /// Reads a PyTorch `pytorch_model.bin` (zip + pickle) fully into memory. The
    /// pickle is walked first (`pickle_scan`) and each tensor's size held to its data:
    /// what candle's reader would abort the process on (deep nesting, a shape of 2^60
    /// elements), panic on, or skip with a line on stderr is refused, naming the file.
    pub fn pickle(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let bad = |message: String| ModelError::BadFile {
            file: label.clone(),
            message,
        };
        crate::file_kind::regular_file(path).map_err(|e| ModelError::io(path, e))?;
        let mut zip = std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|file| {
                zip::ZipArchive::new(std::io::BufReader::new(file))
                    .map_err(|e| format!("not a PyTorch checkpoint (a zip archive): {e}"))
            })
            .map_err(bad)?;
        let pickles: Vec<String> = zip
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .filter(|n| n.ends_with("data.pkl"))
            .collect();
        let mut loads = 0;
        for name in &pickles {
            let mut bytes = vec![];
            zip.by_name(name)
                .and_then(|mut f| Ok(std::io::Read::read_to_end(&mut f, &mut bytes)?))
                .map_err(|e| bad(format!("cannot read its pickle {name}: {e}")))?;
            let found = super::pickle_scan::scan(&bytes)
                .map_err(|e| bad(format!("its pickle {name} cannot be read: {e}")))?;
            if let Some(s) = found
                .storages
                .iter()
                .find(|s| !super::pickle_scan::READ_STORAGES.contains(&s.as_str()))
            {
                return Err(bad(format!(
                    "it holds tensors of torch.{s}, which goosepipe cannot read (it reads {}); save the weights as floats, in safetensors preferably",
                    super::pickle_scan::READ_STORAGES.join(", ")
                )));
            }
            loads += found.persistent_loads;
        }
        let said = |e: candle_core::Error| without_backtrace(e).to_string();
        let read = crate::process::contain::contain(|| -> std::result::Result<_, String> {
            let pth = candle_core::pickle::PthTensors::new(path, None).map_err(said)?;
            let infos = pth.tensor_infos();
            if infos.len() < loads {
                return Err(format!(
                    "only {} of the {loads} tensors it stores can be read (a name given twice, or a tensor the reader does not know)",
                    infos.len()
                ));
            }
            // A tensor claims no more data than its storage holds: a shape of 2^60
            // elements was an allocation that aborted the process.
            let mut names: Vec<&String> = infos.keys().collect();
            names.sort();
            for name in &names {
                let info = &infos[*name];
                let held = zip
                    .by_name(&info.path)
                    .map_err(|e| format!("tensor {name}: its data {}: {e}", info.path))?
                    .size();
                let need = info
                    .layout
                    .dims()
                    .iter()
                    .try_fold(info.dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64))
                    .and_then(|n| n.checked_add(info.layout.start_offset() as u64));
                if need.is_none_or(|n| n > held) {
                    return Err(format!(
                        "tensor {name} of shape {:?} needs more data than its storage {} holds ({held} bytes)",
                        info.layout.dims(),
                        info.path
                    ));
                }
            }
            let mut tensors = HashMap::new();
            for name in names {
                if let Some(t) = pth.get(name).map_err(|e| format!("tensor {name}: {}", said(e)))? {
                    tensors.insert(name.clone(), t);
                }
            }
            Ok(tensors)
        });
        let tensors = match read {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(bad(format!("cannot read PyTorch checkpoint: {e}"))),
            Err(panic) => {
                return Err(bad(format!(
                    "cannot read PyTorch checkpoint (its reader failed: {panic})"
                )));
            }
        };
        Ok(TensorStore::Memory { label, tensors })
    }

    pub fn memory(label: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        TensorStore::Memory {
            label: label.into(),
            tensors,
        }
    }

    pub fn label(&self) -> &str {
        match self {
            TensorStore::Mmap { label, .. } | TensorStore::Memory { label, .. } => label,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            TensorStore::Mmap { names, .. } => names.contains(name),
            TensorStore::Memory { tensors, .. } => tensors.contains_key(name),
        }
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            TensorStore::Mmap { names, .. } => names.iter().cloned().collect(),
            TensorStore::Memory { tensors, .. } => tensors.keys().cloned().collect(),
        }
    }

    /// The tensor `name` with exactly `shape`, on `device` in `dtype`.
    pub fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self
            .get_any(name, device)?
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.label().to_owned(),
                name: name.to_owned(),
            })?;
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                file: self.label().to_owned(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                actual: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(dtype)?)
    }

    /// The tensor `name` in its stored shape and dtype, if present, checked to hold
    /// finite floating-point numbers (what an adapter or gate file must hold: an
    /// integer tensor or a NaN would otherwise flow silently into every score).
    pub fn get_finite(&self, name: &str, device: &Device) -> Result<Option<Tensor>> {
        // Read and checked on the host, then moved: one copy, no device round trip.
        let Some(t) = self.get_any(name, &Device::Cpu)? else {
            return Ok(None);
        };
        let bad = |message: String| ModelError::BadFile {
            file: self.label().to_owned(),
            message,
        };
        if !t.dtype().is_float() {
            return Err(bad(format!(
                "tensor `{name}` holds {:?} numbers; adapters and gates are floating point",
                t.dtype()
            )));
        }
        if let Some((i, v)) = first_non_finite(&t)? {
            return Err(bad(format!(
                "tensor `{name}` holds {v} at element {i} (the file is damaged, or came from a run that diverged)"
            )));
        }
        Ok(Some(t.to_device(device)?))
    }

    /// The stored shape of tensor `name`, read from the file's header (no data is
    /// read), if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            TensorStore::Mmap { st, names, .. } => names
                .contains(name)
                .then(|| st.get(name).ok().map(|v| v.shape().to_vec()))
                .flatten(),
            TensorStore::Memory { tensors, .. } => tensors.get(name).map(|t| t.dims().to_vec()),
        }
    }

    /// The tensor `name` in its stored shape and dtype, if present.
    pub fn get_any(&self, name: &str, device: &Device) -> Result<Option<Tensor>> {
        match self {
            TensorStore::Mmap { st, names, label } => {
                if !names.contains(name) {
                    return Ok(None);
                }
                let t = st.load(name, device).map_err(|e| ModelError::BadFile {
                    file: label.clone(),
                    message: format!("cannot read tensor `{name}`: {e}"),
                })?;
                Ok(Some(t))
            }
            TensorStore::Memory { tensors, .. } => match tensors.get(name) {
                None => Ok(None),
                Some(t) => Ok(Some(t.to_device(device)?)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `torch.save` zip of `pickle`, with 16 bytes of float data for storage "0".
    fn checkpoint(dir: &std::path::Path, pickle: &[u8]) -> std::path::PathBuf {
        use std::io::Write;
        let path = dir.join("adapter_model.bin");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let stored =
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", stored).unwrap();
        z.write_all(pickle).unwrap();
        z.start_file("archive/data/0", stored).unwrap();
        z.write_all(&[0u8; 16]).unwrap();
        z.finish().unwrap();
        path
    }

    #[test]
    fn checkpoints_the_reader_would_abort_on_or_skip_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let store = TensorStore::pickle(&checkpoint(
            t.path(),
            &super::super::pickle_scan::one_tensor("FloatStorage"),
        ))
        .unwrap();
        assert_eq!(store.names(), ["w"]);
        let mut deep = vec![0x80, 2, b'N'];
        deep.extend(std::iter::repeat_n(0x85, 300_000));
        deep.push(b'.');
        let said = |p: &[u8]| match TensorStore::pickle(&checkpoint(t.path(), p)) {
            Ok(_) => panic!("read"),
            Err(e) => e.to_string(),
        };
        let e = said(&deep);
        assert!(
            e.contains("adapter_model.bin: its pickle archive/data.pkl cannot be read: its objects nest more than 64 deep"),
            "{e}"
        );
        let e = said(&super::super::pickle_scan::one_tensor("IntStorage"));
        assert!(
            e.contains("it holds tensors of torch.IntStorage, which goosepipe cannot read"),
            "{e}"
        );
        // A shape far beyond its data (2^30 x 2^30 floats) is not allocated.
        let huge = super::super::pickle_scan::one_tensor("FloatStorage");
        let at = huge.windows(4).position(|w| w == [b'K', 2, b'K', 2]).unwrap();
        let mut huge = huge;
        huge.splice(at..at + 4, [b'J', 0, 0, 0, 64, b'J', 0, 0, 0, 64]);
        let e = said(&huge);
        assert!(
            e.contains("tensor w of shape [1073741824, 1073741824] needs more data than its storage archive/data/0 holds (16 bytes)"),
            "{e}"
        );
    }
}
