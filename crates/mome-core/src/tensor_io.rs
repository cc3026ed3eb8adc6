//! Safetensors reading and writing, and loading named tensors into a [`nn::VarStore`].
//!
//! Files are written atomically (temp file + rename). Any dtype that safetensors and
//! libtorch share is supported (f32, f64, f16, bf16, i8..i64, u8, bool); tensors are
//! moved to the CPU and made contiguous before writing.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::{Dtype, View};
use tch::{nn, Device, Kind, Tensor};

use crate::error::ShapeMismatch;
use mome_data::fsutil;

use crate::{Error, Result};

fn kind_to_dtype(name: &str, kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Bool => Dtype::BOOL,
        Kind::BFloat16 => Dtype::BF16,
        other => {
            return Err(Error::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

fn dtype_to_kind(name: &str, dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::BOOL => Kind::Bool,
        Dtype::BF16 => Kind::BFloat16,
        other => {
            return Err(Error::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// A CPU copy of one tensor's bytes, as safetensors wants it.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_host(name: &str, t: &Tensor) -> Result<HostTensor> {
    let kind = t.f_kind()?;
    let dtype = kind_to_dtype(name, kind)?;
    let cpu = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
    let numel = cpu.numel();
    let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
    if numel > 0 {
        cpu.f_copy_data_u8(&mut data, numel)?;
    }
    Ok(HostTensor {
        dtype,
        shape: cpu.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// The largest absolute element difference between two lists of named tensors
/// with the same names, in the same order, and the same shapes (any devices and
/// float kinds; compared in fp64 on the CPU), e.g. the weights of two runs; NaN when
/// a difference is NaN. A difference in names, order, count or shape is an error
/// naming it.
///
/// ```
/// use mome_core::tensor_io::max_abs_diff;
/// use tch::Tensor;
/// let a = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
/// let b = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.5]))];
/// assert_eq!(max_abs_diff(&a, &b).unwrap(), 0.5);
/// ```
pub fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> Result<f64> {
    if a.len() != b.len() {
        return Err(Error::Other(format!(
            "{} tensors against {}",
            a.len(),
            b.len()
        )));
    }
    let mut worst = 0.0f64;
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        if na != nb || ta.size() != tb.size() {
            return Err(Error::Other(format!(
                "`{na}` {:?} against `{nb}` {:?}",
                ta.size(),
                tb.size()
            )));
        }
        if ta.numel() == 0 {
            continue;
        }
        let cpu = |t: &Tensor| {
            t.f_detach()?
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Double)
        };
        let d = cpu(ta)?
            .f_sub(&cpu(tb)?)?
            .f_abs()?
            .f_max()?
            .f_double_value(&[])?;
        if d.is_nan() {
            return Ok(f64::NAN);
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

/// Serialises named tensors to safetensors bytes (names must be unique).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut host: BTreeMap<&str, HostTensor> = BTreeMap::new();
    for (name, t) in tensors {
        if host.insert(name, to_host(name, t)?).is_some() {
            return Err(Error::Other(format!(
                "duplicate tensor name `{name}` in safetensors output"
            )));
        }
    }
    safetensors::serialize(host.iter().map(|(k, v)| (*k, v)), None).map_err(|source| {
        Error::Safetensors {
            path: "<memory>".into(),
            source,
        }
    })
}

/// Writes named tensors to a safetensors file atomically. Tensors may live on any
/// device and have any supported dtype (bf16, f16, f32, i64, ...).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let bytes = safetensors_bytes(tensors).map_err(|e| match e {
        Error::Safetensors { source, .. } => Error::Safetensors {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })?;
    Ok(fsutil::write_atomic(path, &bytes)?)
}

/// Reads every tensor of a safetensors file onto `device`, sorted by name, keeping
/// the stored dtype.
pub fn read_safetensors(path: &Path, device: Device) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|source| Error::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = dtype_to_kind(&name, view.dtype())?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?.f_to_device(device)?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Whether a config that describes `needed` parameters (`None`: more than `u64`
/// holds) is plainly larger than weight files holding `held` elements: more than
/// twice as many, plus 2^20. Loaders refuse such a config before they build (allocate)
/// the model; closer mismatches go on to the key-by-key comparison of the load, whose
/// error names every missing, unexpected and mismatched tensor.
pub fn config_exceeds_weights(needed: Option<u64>, held: u64) -> bool {
    needed.is_none_or(|n| n > held.saturating_mul(2).saturating_add(1 << 20))
}

/// The number of parameters (elements of every tensor) of a safetensors file, from
/// its header as the `safetensors` crate validates it; the tensor data is mapped,
/// not read.
pub fn safetensors_param_count(path: &Path) -> Result<u64> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let map = map_file(&file, path)?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|source| Error::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(meta
        .tensors()
        .values()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum())
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map_file(file: &std::fs::File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: the map is read while this function's caller holds it; a file changed
    // underneath by another process can only give wrong header values, which the
    // safetensors crate validates.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))
}

/// All variables of a VarStore (trainable or not), sorted by name. The tensors are
/// shallow clones: they share storage with the VarStore.
pub fn named_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// What [`load_into`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables that were overwritten, sorted.
    pub loaded: Vec<String>,
    /// Variables with no supplied tensor (left untouched), sorted.
    pub missing: Vec<String>,
    /// Supplied tensors with no variable of that name (ignored), sorted.
    pub unexpected: Vec<String>,
}

/// Copies `tensors` into the variables of `vs` with the same names, under `no_grad`,
/// converting dtype and device as needed.
///
/// Shape mismatches are always an error. With `strict`, missing and unexpected names
/// are errors too; otherwise they are listed in the returned [`LoadReport`]. Nothing
/// is copied unless the whole load is valid. Errors list every offending name.
pub fn load_into(
    vs: &nn::VarStore,
    tensors: &[(String, Tensor)],
    strict: bool,
) -> Result<LoadReport> {
    let vars = vs.variables();
    let mut supplied: BTreeMap<&str, &Tensor> = BTreeMap::new();
    for (name, t) in tensors {
        if supplied.insert(name.as_str(), t).is_some() {
            return Err(Error::Other(format!("duplicate tensor name `{name}`")));
        }
    }
    let var_names: BTreeSet<&str> = vars.keys().map(|s| s.as_str()).collect();
    let missing: Vec<String> = var_names
        .iter()
        .filter(|n| !supplied.contains_key(*n))
        .map(|n| n.to_string())
        .collect();
    let unexpected: Vec<String> = supplied
        .keys()
        .filter(|n| !var_names.contains(*n))
        .map(|n| n.to_string())
        .collect();
    let mut mismatched = Vec::new();
    for (name, t) in &supplied {
        if let Some(v) = vars.get(*name) {
            let (expected, found) = (v.size(), t.size());
            if expected != found {
                mismatched.push(ShapeMismatch {
                    name: name.to_string(),
                    expected,
                    found,
                });
            }
        }
    }
    if !mismatched.is_empty() || (strict && (!missing.is_empty() || !unexpected.is_empty())) {
        return Err(Error::LoadMismatch {
            missing,
            unexpected,
            mismatched,
        });
    }
    let mut loaded = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in &supplied {
            if let Some(v) = vars.get(*name) {
                let mut v = v.shallow_clone();
                v.f_copy_(t)?;
                loaded.push(name.to_string());
            }
        }
        Ok(())
    })?;
    Ok(LoadReport {
        loaded,
        missing,
        unexpected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_refused_up_front_only_when_plainly_larger_than_its_weights() {
        assert!(!config_exceeds_weights(Some(1000), 1000));
        assert!(!config_exceeds_weights(Some(1128), 1000)); // a few keys off: the load names them
        assert!(!config_exceeds_weights(Some(2000 + (1 << 20)), 1000));
        assert!(config_exceeds_weights(Some(2001 + (1 << 20)), 1000));
        assert!(config_exceeds_weights(Some(1 << 40), 1 << 20));
        assert!(config_exceeds_weights(None, u64::MAX));
    }

    #[test]
    fn round_trip_all_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let base = Tensor::from_slice(&[1.5f32, -2.25, 3.0, 0.125, 7.0, -0.5]).view([2, 3]);
        let tensors = vec![
            ("f32".to_string(), base.shallow_clone()),
            ("bf16".to_string(), base.to_kind(Kind::BFloat16)),
            ("f16".to_string(), base.to_kind(Kind::Half)),
            ("f64".to_string(), base.to_kind(Kind::Double)),
            ("i64".to_string(), Tensor::from_slice(&[1i64, -5, 1 << 40])),
            ("transposed".to_string(), base.tr()),
            ("scalar".to_string(), Tensor::from(3.5f32)),
        ];
        write_safetensors(&p, &tensors).unwrap();
        let back = read_safetensors(&p, Device::Cpu).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["bf16", "f16", "f32", "f64", "i64", "scalar", "transposed"]
        );
        for (name, t) in &back {
            let orig = &tensors.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(t.kind(), orig.kind(), "{name}");
            assert_eq!(t.size(), orig.size(), "{name}");
            assert!(t.equal(orig), "{name} differs after round trip");
        }
        // no temp files left behind
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn tiny_vs() -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = (&root / "a").var("weight", &[2, 3], nn::Init::Const(0.0));
        let _ = (&root / "a").var("bias", &[2], nn::Init::Const(0.0));
        let _ = (&root / "b").var("weight", &[4], nn::Init::Const(0.0));
        vs
    }

    #[test]
    fn load_into_copies_values() {
        let vs = tiny_vs();
        let src = vec![
            (
                "a.weight".to_string(),
                Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
            ),
            ("a.bias".to_string(), Tensor::from_slice(&[1.0f64, 2.0])),
            (
                "b.weight".to_string(),
                Tensor::full([4], 3.0, (Kind::Float, Device::Cpu)),
            ),
        ];
        let report = load_into(&vs, &src, true).unwrap();
        assert_eq!(report.loaded.len(), 3);
        let vars = vs.variables();
        assert_eq!(vars["a.bias"].kind(), Kind::Float);
        assert_eq!(
            Vec::<f32>::try_from(&vars["a.bias"]).unwrap(),
            vec![1.0, 2.0]
        );
        assert_eq!(vars["b.weight"].sum(Kind::Double).double_value(&[]), 12.0);
        assert!(vars["a.weight"].requires_grad());
    }

    #[test]
    fn load_into_lists_every_problem_by_name() {
        let vs = tiny_vs();
        let src = vec![
            (
                "a.weight".to_string(),
                Tensor::ones([3, 2], (Kind::Float, Device::Cpu)),
            ),
            (
                "a.bias".to_string(),
                Tensor::ones([2], (Kind::Float, Device::Cpu)),
            ),
            (
                "c.extra".to_string(),
                Tensor::ones([1], (Kind::Float, Device::Cpu)),
            ),
        ];
        let err = load_into(&vs, &src, true).unwrap_err();
        match &err {
            Error::LoadMismatch {
                missing,
                unexpected,
                mismatched,
            } => {
                assert_eq!(missing, &["b.weight"]);
                assert_eq!(unexpected, &["c.extra"]);
                assert_eq!(
                    mismatched,
                    &[ShapeMismatch {
                        name: "a.weight".into(),
                        expected: vec![2, 3],
                        found: vec![3, 2]
                    }]
                );
            }
            other => panic!("wrong error {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("b.weight") && msg.contains("c.extra") && msg.contains("[3, 2]"));
        // nothing was copied
        assert_eq!(
            vs.variables()["a.bias"].sum(Kind::Double).double_value(&[]),
            0.0
        );

        // non-strict: missing/unexpected are reported, not errors
        let src2 = vec![
            (
                "a.bias".to_string(),
                Tensor::ones([2], (Kind::Float, Device::Cpu)),
            ),
            (
                "c.extra".to_string(),
                Tensor::ones([1], (Kind::Float, Device::Cpu)),
            ),
        ];
        let r = load_into(&vs, &src2, false).unwrap();
        assert_eq!(r.loaded, ["a.bias"]);
        assert_eq!(r.missing, ["a.weight", "b.weight"]);
        assert_eq!(r.unexpected, ["c.extra"]);
        // but a shape mismatch is an error even when not strict
        assert!(matches!(
            load_into(&vs, &src, false),
            Err(Error::LoadMismatch { .. })
        ));
    }
}
