//! ONNX `TensorProto` to runtime tensors, including raw, typed-field and external data.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use fff_runtime::{DType, Tensor};
use tract_onnx::pb::TensorProto;

/// Reads an ONNX tensor. `model_dir` resolves external data files.
pub fn tensor_from_proto(t: &TensorProto, model_dir: Option<&Path>) -> Result<Tensor, String> {
    let dtype = DType::from_onnx(t.data_type).ok_or_else(|| {
        format!(
            "tensor '{}' has element type {} ({}), which fff does not support",
            t.name,
            t.data_type,
            type_name(t.data_type)
        )
    })?;
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| format!("tensor '{}' has a negative dimension {d}", t.name))
        })
        .collect::<Result<_, _>>()?;
    let n = fff_runtime::tensor::checked_len(&shape).map_err(|e| e.to_string())?;
    let external;
    let raw: Option<&[u8]> = if t.data_location == Some(1) {
        external = read_external(t, model_dir)?;
        Some(&external)
    } else if !t.raw_data.is_empty() || n == 0 {
        Some(&t.raw_data)
    } else {
        None
    };
    if let Some(raw) = raw {
        return Tensor::from_le_bytes(dtype, &shape, raw)
            .map_err(|e| format!("tensor '{}': {e}", t.name));
    }
    let bytes: Vec<u8> = match dtype {
        DType::F32 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::Bool => t.int32_data.iter().map(|&v| (v != 0) as u8).collect(),
        // ONNX stores 8-bit integers one per int32_data entry; a value out of range is a damaged file.
        DType::U8 | DType::I8 => {
            let (lo, hi) = if dtype == DType::U8 {
                (0, 255)
            } else {
                (-128, 127)
            };
            if let Some(v) = t.int32_data.iter().find(|v| !(lo..=hi).contains(*v)) {
                return Err(format!("tensor '{}': {v} is out of {dtype} range", t.name));
            }
            t.int32_data.iter().map(|&v| v as u8).collect()
        }
        DType::BF16 => return Err(format!("tensor '{}': {dtype} is not supported", t.name)),
    };
    Tensor::from_le_bytes(dtype, &shape, &bytes).map_err(|e| format!("tensor '{}': {e}", t.name))
}

fn read_external(t: &TensorProto, model_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.clone())
    };
    let location = get("location")
        .ok_or_else(|| format!("tensor '{}' is external but names no file", t.name))?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "tensor '{}' names external file '{location}' outside the model's folder",
            t.name
        ));
    }
    let path = inside_model_dir(&t.name, &location, model_dir)?;
    let parse = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("tensor '{}': bad {k} '{v}'", t.name))
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?;
    // Only this tensor's range is read: exporters put every tensor of a model in one file, so reading
    // the whole file per tensor would read it once per tensor.
    let cannot_read =
        |e: std::io::Error| format!("tensor '{}': cannot read {}: {e}", t.name, path.display());
    // A FIFO or device would block the open or never end; only a regular file holds weights.
    if !std::fs::metadata(&path).map_err(cannot_read)?.is_file() {
        return Err(format!(
            "tensor '{}': external data {} is not a regular file",
            t.name,
            path.display()
        ));
    }
    let mut file = std::fs::File::open(&path).map_err(cannot_read)?;
    let size = file.metadata().map_err(cannot_read)?.len();
    let outside = || {
        format!(
            "tensor '{}': external data range lies outside {}",
            t.name,
            path.display()
        )
    };
    let len = match length {
        Some(l) => l,
        None => size.checked_sub(offset).ok_or_else(outside)?,
    };
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(outside());
    }
    let len = usize::try_from(len).map_err(|_| outside())?;
    file.seek(SeekFrom::Start(offset)).map_err(cannot_read)?;
    let mut data = vec![0u8; len];
    file.read_exact(&mut data).map_err(cannot_read)?;
    Ok(data)
}

/// The file an external `location` names, with symlinks resolved, which must lie inside the model's
/// folder (resolved too): a link inside the folder may point anywhere, and the lexical check alone
/// would follow it out of the folder.
fn inside_model_dir(
    tensor: &str,
    location: &str,
    model_dir: Option<&Path>,
) -> Result<PathBuf, String> {
    // `Path::parent` of a bare file name is the empty path: the current folder.
    let dir = model_dir
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let path = dir.join(location);
    let root = dir.canonicalize().map_err(|e| {
        format!(
            "tensor '{tensor}': cannot resolve the model's folder {}: {e}",
            dir.display()
        )
    })?;
    let resolved = path
        .canonicalize()
        .map_err(|e| format!("tensor '{tensor}': cannot read {}: {e}", path.display()))?;
    if !resolved.starts_with(&root) {
        return Err(format!(
            "tensor '{tensor}' names external file '{location}', which resolves to {}, outside the model's folder {}",
            resolved.display(),
            root.display()
        ));
    }
    Ok(resolved)
}

/// ONNX's name for an element type code, for messages.
pub fn type_name(code: i32) -> &'static str {
    match code {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => "other",
    }
}
