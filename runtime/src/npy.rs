//! Inputs and outputs as NumPy files, so that large inputs need no JSON: `.npy` holds one array, `.npz`
//! holds arrays by name. float32, int64, int32, int8, uint8 and bool arrays in C order are read;
//! outputs are written as float32/int64/int32/int8/uint8/bool arrays in an `.npz`.

use std::io::Read;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use npyz::{NpyFile, Order, TypeChar, WriterBuilder};

use crate::error::{Error, Result};
use crate::plan::{Dim, PlanInput};
use crate::tensor::{DType, Tensor};

/// Reads a `.npy` file holding one array.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let npy = NpyFile::new(std::io::BufReader::new(file))
        .map_err(|e| Error::input(format!("{} is not a .npy file: {e}", path.display())))?;
    tensor_from_npy(npy, &path.display().to_string())
}

/// Reads every array of a `.npz` file, keyed by array name.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let (mut archive, names) = open_npz(path)?;
    read_members(&mut archive, names, path)
}

type Archive = npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>;

/// The error for a `.npz` file that cannot be read.
fn npz_error(path: &Path, e: std::io::Error) -> Error {
    Error::input(format!(
        "{} is not a readable .npz file: {e}",
        path.display()
    ))
}

/// Opens a `.npz` file and lists its array names.
fn open_npz(path: &Path) -> Result<(Archive, Vec<String>)> {
    let archive = npyz::npz::NpzArchive::open(path).map_err(|e| npz_error(path, e))?;
    let names = archive.array_names().map(str::to_string).collect();
    Ok((archive, names))
}

/// Reads (inflates) the arrays `names` of an open `.npz`.
fn read_members(
    archive: &mut Archive,
    names: Vec<String>,
    path: &Path,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let npy = archive
            .by_name(&name)
            .map_err(|e| npz_error(path, e))?
            .ok_or_else(|| Error::input(format!("array '{name}' vanished")))?;
        let what = format!("array '{name}' of {}", path.display());
        out.push((name, tensor_from_npy(npy, &what)?));
    }
    Ok(out)
}

/// Reads the arrays of a `.npz` file as the inputs `specs` declare. Every member is matched to an
/// input by name and its header (element type, rank, fixed dimensions, and a data size that the
/// member's stored size can hold) is checked before any member's data is inflated, so an array the
/// model does not take, or one of the wrong shape, costs nothing to refuse however large it is.
pub fn read_npz_inputs(path: &Path, specs: &[PlanInput]) -> Result<Vec<(String, Tensor)>> {
    let bad = |e: std::io::Error| npz_error(path, e);
    let (mut archive, names) = open_npz(path)?;
    for name in &names {
        let what = format!("array '{name}' of {}", path.display());
        let spec = specs.iter().find(|s| &s.name == name).ok_or_else(|| {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            Error::input(format!(
                "{what}: unknown input '{name}'; the model's inputs are {known:?}"
            ))
        })?;
        let stored = archive
            .zip_archive()
            .by_name(&format!("{name}.npy"))
            .map(|f| f.size())
            .map_err(|e| bad(std::io::Error::other(e)))?;
        // Only the header is inflated here.
        let npy = archive
            .by_name(name)
            .map_err(bad)?
            .ok_or_else(|| Error::input(format!("array '{name}' vanished")))?;
        check_header(&npy, spec, stored, &what)?;
    }
    read_members(&mut archive, names, path)
}

/// Checks an array's header against the input it is for: element type, C order, rank, fixed
/// dimensions, and a data size within the `stored` bytes of its member.
fn check_header<R: Read>(
    npy: &NpyFile<R>,
    spec: &PlanInput,
    stored: u64,
    what: &str,
) -> Result<()> {
    let bad = |msg: String| Error::input(format!("{what}: {msg}"));
    let dtype = match npy.dtype() {
        npyz::DType::Plain(ts) => match (ts.type_char(), ts.size_field()) {
            (TypeChar::Float, 4) => Some(DType::F32),
            (TypeChar::Int, 8) => Some(DType::I64),
            (TypeChar::Int, 4) => Some(DType::I32),
            (TypeChar::Bool, 1) => Some(DType::Bool),
            (TypeChar::Int, 1) => Some(DType::I8),
            (TypeChar::Uint, 1) => Some(DType::U8),
            _ => None,
        },
        _ => None,
    };
    if dtype != Some(spec.dtype) {
        return Err(bad(format!(
            "has element type {}, but input '{}' is {}",
            npy.dtype().descr(),
            spec.name,
            spec.dtype
        )));
    }
    let shape = npy.shape();
    let declared = crate::model::shape_text(&spec.shape);
    if shape.len() != spec.shape.len()
        || shape
            .iter()
            .zip(&spec.shape)
            .any(|(&got, want)| match want {
                Dim::Fixed(n) => got != *n as u64,
                Dim::Sym(_) => false,
            })
    {
        return Err(bad(format!(
            "has shape {shape:?}, but input '{}' is {declared}",
            spec.name
        )));
    }
    let bytes = shape
        .iter()
        .try_fold(spec.dtype.size() as u64, |acc, &d| acc.checked_mul(d));
    match bytes {
        Some(bytes) if bytes <= stored => Ok(()),
        _ => Err(bad(format!(
            "its header's shape {shape:?} holds more data than the {stored} bytes stored"
        ))),
    }
}

fn tensor_from_npy<R: Read>(npy: NpyFile<R>, what: &str) -> Result<Tensor> {
    let bad = |msg: String| Error::input(format!("{what}: {msg}"));
    if npy.order() == Order::Fortran {
        return Err(bad(
            "is in Fortran order; save it in C order (numpy.ascontiguousarray)".into(),
        ));
    }
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
        .collect::<Result<_>>()?;
    let ts = match npy.dtype() {
        npyz::DType::Plain(ts) => ts,
        _ => return Err(bad("holds records or nested arrays, not numbers".into())),
    };
    let read_err = |e: std::io::Error| bad(format!("cannot read its data: {e}"));
    macro_rules! array {
        ($t:ty) => {
            ArrayD::from_shape_vec(IxDyn(&shape), npy.into_vec::<$t>().map_err(read_err)?)
                .map_err(|e| bad(e.to_string()))?
        };
    }
    let t = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => {
            // Moved to a buffer that may be backed by huge pages when large (see `buffers::fresh`).
            let data = crate::buffers::into_fresh(npy.into_vec::<f32>().map_err(read_err)?);
            Tensor::F32(
                ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| bad(e.to_string()))?,
            )
        }
        (TypeChar::Int, 8) => Tensor::I64(array!(i64)),
        (TypeChar::Int, 4) => Tensor::I32(array!(i32)),
        (TypeChar::Bool, 1) => Tensor::Bool(array!(bool)),
        (TypeChar::Int, 1) => Tensor::I8(array!(i8)),
        (TypeChar::Uint, 1) => Tensor::U8(array!(u8)),
        _ => {
            return Err(bad(format!(
                "has element type {ts}; fff reads float32, int64, int32, int8, uint8 and bool"
            )))
        }
    };
    Ok(t)
}

/// Writes tensors into a `.npz` file, one array per name, atomically ([`crate::files::write_atomic`]).
pub fn write_npz(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut failure = None;
    crate::files::write_atomic(path, |w| {
        write_npz_to(w, tensors).map_err(|e| {
            let io = std::io::Error::other(e.to_string());
            failure = Some(e);
            io
        })
    })
    .map_err(|e| {
        failure
            .take()
            .unwrap_or_else(|| Error::io(format!("cannot write {}", path.display()), e))
    })
}

/// Writes tensors as a `.npz` archive into `out`.
fn write_npz_to<W: std::io::Write + std::io::Seek>(
    out: W,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("cannot write the .npz archive", e);
    let mut npz = npyz::npz::NpzWriter::new(out);
    for (name, t) in tensors {
        let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
        let options = npyz::zip::write::FileOptions::default();
        macro_rules! put {
            ($a:expr, $ty:ty) => {{
                let mut w = npz
                    .array::<$ty>(name, options)
                    .map_err(io)?
                    .default_dtype()
                    .shape(&shape)
                    .begin_nd()
                    .map_err(io)?;
                w.extend($a.iter().copied()).map_err(io)?;
                w.finish().map_err(io)?;
            }};
        }
        match t {
            Tensor::F32(a) => put!(a, f32),
            Tensor::I64(a) => put!(a, i64),
            Tensor::I32(a) => put!(a, i32),
            Tensor::Bool(a) => put!(a, bool),
            // NumPy has no bfloat16: written widened (exactly) to float32.
            Tensor::BF16(a) => put!(a.mapv(|v| v.to_f32()), f32),
            Tensor::I8(a) => put!(a, i8),
            Tensor::U8(a) => put!(a, u8),
        }
    }
    npz.zip_writer()
        .finish()
        .map_err(|e| Error::invalid(format!("cannot finish the .npz archive: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npz_round_trip_keeps_names_dtypes_shapes_and_values() {
        let dir = std::env::temp_dir().join(format!("fff-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.npz");
        let tensors = vec![
            (
                "x".to_string(),
                Tensor::F32(
                    ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1., 2., 3., 4., 5., f32::NAN])
                        .unwrap(),
                ),
            ),
            (
                "ids".to_string(),
                Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![-1, 0, 7]).unwrap()),
            ),
            (
                "m".to_string(),
                Tensor::Bool(ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![true, false]).unwrap()),
            ),
        ];
        write_npz(&path, &tensors).unwrap();
        let mut back = read_npz(&path).unwrap();
        back.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = tensors.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back.len(), 3);
        for ((n1, t1), (n2, t2)) in back.iter().zip(&want) {
            assert_eq!(n1, n2);
            assert_eq!(t1.shape(), t2.shape());
            assert_eq!(t1.to_le_bytes(), t2.to_le_bytes(), "{n1}");
        }
        std::fs::write(dir.join("bad.npy"), b"not numpy").unwrap();
        assert!(read_npy(&dir.join("bad.npy"))
            .unwrap_err()
            .to_string()
            .contains("not a .npy file"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
