//! Where named tensors come from: memory-mapped safetensors (one file or
//! shards), a PyTorch pickle, or an in-memory map (random init, tests). Every
//! lookup checks the shape so that a wrong checkpoint fails with the tensor name.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::model::error::{ModelError, Result};

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

    /// Reads a PyTorch `pytorch_model.bin` (zip + pickle) fully into memory.
    pub fn pickle(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let tensors = candle_core::pickle::read_all(path).map_err(|e| ModelError::BadFile {
            file: label.clone(),
            message: format!("cannot read PyTorch checkpoint: {e}"),
        })?;
        Ok(TensorStore::Memory {
            label,
            tensors: tensors.into_iter().collect(),
        })
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
