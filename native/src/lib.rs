//! sdg-edge's hot paths in native code, for `schemas.columnar` and the lineage sink.
//!
//! - `Reader`: Avro bodies of one writer schema checked and read into columns at once. Python compiles the schema
//!   and the record model's field constraints into a program (JSON: a tree of nodes); a value passes when it is the
//!   canonical encoding of a record (minimal varints, one array block, no duplicate map keys, no byte left over)
//!   whose fields keep their constraints. The fields the program captures come back as Arrow buffers, for the rows
//!   that pass. A value that does not pass is not an error here: it takes the one-record path, which says why.
//! - `contents`: each row's chained content (the lineage chain's second format) from a batch's Arrow buffers.
//! - `chain`: the lineage hash chains of a batch of rows (SHA-256 of the previous row's hash and the row's content).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use regex::Regex;
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq)]
enum Out {
    Int,
    Float,
    Binary,
}

enum Kind {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Fixed(usize),
    Enum(i64),
    Record(Vec<Node>),
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Vec<Node>),
}

struct Node {
    kind: Kind,
    min: Option<i64>, // numbers: the least value; strings: the fewest characters; arrays and maps: the fewest items
    max: Option<i64>,
    pattern: Option<Regex>,
    one_of: Option<Vec<String>>,
    finite: bool,
    span: bool,   // captured as the bytes it is encoded in, not as its value
    length: bool, // (bytes, strings) captured as their length in bytes
    capture: Option<usize>,
}

fn bad(message: String) -> PyErr {
    PyValueError::new_err(message)
}

fn parse(v: &Value, outs: &mut Vec<Option<Out>>) -> PyResult<Node> {
    let kind_name = v["type"]
        .as_str()
        .ok_or_else(|| bad(format!("a node without a type: {v}")))?;
    let children = |key: &str, outs: &mut Vec<Option<Out>>| -> PyResult<Vec<Node>> {
        v[key]
            .as_array()
            .ok_or_else(|| bad(format!("{kind_name} without {key}")))?
            .iter()
            .map(|c| parse(c, outs))
            .collect()
    };
    let child = |key: &str, outs: &mut Vec<Option<Out>>| -> PyResult<Box<Node>> { Ok(Box::new(parse(&v[key], outs)?)) };
    let kind = match kind_name {
        "null" => Kind::Null,
        "boolean" => Kind::Boolean,
        "int" => Kind::Int,
        "long" => Kind::Long,
        "float" => Kind::Float,
        "double" => Kind::Double,
        "bytes" => Kind::Bytes,
        "string" => Kind::Str,
        "fixed" => Kind::Fixed(v["size"].as_u64().ok_or_else(|| bad("fixed without size".into()))? as usize),
        "enum" => Kind::Enum(
            v["symbols"]
                .as_i64()
                .ok_or_else(|| bad("enum without symbols".into()))?,
        ),
        "record" => Kind::Record(children("fields", outs)?),
        "array" => Kind::Array(child("items", outs)?),
        "map" => Kind::Map(child("values", outs)?),
        "union" => Kind::Union(children("branches", outs)?),
        other => return Err(bad(format!("unknown node type {other}"))),
    };
    let pattern = match v["pattern"].as_str() {
        Some(p) => Some(Regex::new(p).map_err(|e| bad(format!("pattern {p}: {e}")))?),
        None => None,
    };
    let one_of = v["one_of"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect());
    let capture = v["capture"].as_u64().map(|c| c as usize);
    let span = v["span"].as_bool() == Some(true);
    let length = v["length"].as_bool() == Some(true);
    if let Some(c) = capture {
        let out = match kind {
            _ if span => Out::Binary,
            Kind::Bytes | Kind::Str if length => Out::Int,
            Kind::Boolean | Kind::Int | Kind::Long | Kind::Enum(_) | Kind::Array(_) | Kind::Map(_) => Out::Int,
            Kind::Float | Kind::Double => Out::Float,
            Kind::Bytes | Kind::Str | Kind::Fixed(_) => Out::Binary,
            Kind::Union(ref branches) => {
                let inner: Vec<Out> = branches
                    .iter()
                    .filter_map(|b| b.capture.and_then(|i| outs[i]))
                    .collect();
                *inner
                    .first()
                    .ok_or_else(|| bad("a captured union names its value's column on its branch".into()))?
            }
            Kind::Null | Kind::Record(_) => return Err(bad(format!("a {kind_name} is not captured"))),
        };
        if outs.len() <= c {
            outs.resize(c + 1, None);
        }
        outs[c] = Some(out);
    }
    Ok(Node {
        kind,
        min: v["min"].as_i64(),
        max: v["max"].as_i64(),
        pattern,
        one_of,
        finite: v["finite"].as_bool() == Some(true),
        span,
        length,
        capture,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A zigzag varint in its shortest form (an over-long one is not canonical).
    fn long(&mut self) -> Option<i64> {
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return None;
            }
            z |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return None;
                }
                return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
            shift += 7;
        }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len())?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Some(out)
    }

    /// The item count of an array or a map as the codec writes it: one block (a positive count) or none.
    fn count(&mut self) -> Option<i64> {
        let n = self.long()?;
        (0..=(self.buf.len() - self.pos) as i64).contains(&n).then_some(n)
    }

    fn end_of_block(&mut self, n: i64) -> Option<()> {
        (n == 0 || self.long()? == 0).then_some(())
    }
}

struct Column {
    out: Out,
    data: Vec<u8>,
    offsets: Vec<i32>,
    valid: Vec<bool>,
}

impl Column {
    fn int(&mut self, v: i64) {
        self.data.extend_from_slice(&v.to_le_bytes());
        self.valid.push(true);
    }
    fn float(&mut self, v: f64) {
        self.data.extend_from_slice(&v.to_le_bytes());
        self.valid.push(true);
    }
    fn binary(&mut self, v: &[u8]) -> Option<()> {
        self.data.extend_from_slice(v);
        self.offsets.push(i32::try_from(self.data.len()).ok()?);
        self.valid.push(true);
        Some(())
    }
    fn null(&mut self) {
        match self.out {
            Out::Binary => self.offsets.push(self.data.len() as i32),
            _ => self.data.extend_from_slice(&[0; 8]),
        }
        self.valid.push(false);
    }
}

fn within(node: &Node, v: i64) -> Option<()> {
    (node.min.is_none_or(|m| v >= m) && node.max.is_none_or(|m| v <= m)).then_some(())
}

fn walk(node: &Node, cur: &mut Cursor, cols: &mut [Column], cap: Option<usize>) -> Option<()> {
    let cap = node.capture.or(cap);
    if node.span {
        let start = cur.pos;
        read(node, cur, cols, None)?;
        if let Some(c) = cap {
            cols[c].binary(&cur.buf[start..cur.pos])?;
        }
        return Some(());
    }
    read(node, cur, cols, cap)
}

fn read(node: &Node, cur: &mut Cursor, cols: &mut [Column], cap: Option<usize>) -> Option<()> {
    let int = |cols: &mut [Column], v: i64| {
        if let Some(c) = cap {
            cols[c].int(v)
        }
    };
    match &node.kind {
        Kind::Null => {
            if let Some(c) = cap {
                cols[c].null()
            }
        }
        Kind::Boolean => {
            let b = cur.take(1)?[0];
            (b <= 1).then_some(())?;
            int(cols, b as i64);
        }
        Kind::Int | Kind::Long => {
            let v = cur.long()?;
            if matches!(node.kind, Kind::Int) {
                i32::try_from(v).ok()?;
            }
            within(node, v)?;
            int(cols, v);
        }
        Kind::Float | Kind::Double => {
            let v = match node.kind {
                Kind::Float => f32::from_le_bytes(cur.take(4)?.try_into().ok()?) as f64,
                _ => f64::from_le_bytes(cur.take(8)?.try_into().ok()?),
            };
            (!node.finite || v.is_finite()).then_some(())?;
            if let Some(c) = cap {
                cols[c].float(v)
            }
        }
        Kind::Bytes | Kind::Str | Kind::Fixed(_) => {
            let v = match node.kind {
                Kind::Fixed(n) => cur.take(n)?,
                _ => {
                    let n = cur.long()?;
                    cur.take(usize::try_from(n).ok()?)?
                }
            };
            if matches!(node.kind, Kind::Str) {
                let s = std::str::from_utf8(v).ok()?;
                if node.min.is_some() || node.max.is_some() {
                    within(node, s.chars().count() as i64)?;
                }
                if let Some(p) = &node.pattern {
                    p.is_match(s).then_some(())?;
                }
                if let Some(set) = &node.one_of {
                    set.iter().any(|x| x == s).then_some(())?;
                }
            }
            match cap {
                Some(c) if node.length => cols[c].int(v.len() as i64),
                Some(c) => cols[c].binary(v)?,
                None => {}
            }
        }
        Kind::Enum(symbols) => {
            let i = cur.long()?;
            (0..*symbols).contains(&i).then_some(())?;
            int(cols, i);
        }
        Kind::Record(fields) => {
            for f in fields {
                walk(f, cur, cols, None)?;
            }
        }
        Kind::Array(items) => {
            let n = cur.count()?;
            within(node, n)?;
            for _ in 0..n {
                walk(items, cur, cols, None)?;
            }
            cur.end_of_block(n)?;
            int(cols, n);
        }
        Kind::Map(values) => {
            let n = cur.count()?;
            within(node, n)?;
            let mut keys: Vec<&[u8]> = Vec::new(); // the keys so far, once there is more than one
            for _ in 0..n {
                let len = cur.long()?;
                let key = cur.take(usize::try_from(len).ok()?)?;
                std::str::from_utf8(key).ok()?;
                if n > 1 {
                    (!keys.contains(&key)).then_some(())?; // a dict has each key once
                    keys.push(key);
                }
                walk(values, cur, cols, None)?;
            }
            cur.end_of_block(n)?;
            int(cols, n);
        }
        Kind::Union(branches) => {
            let i = cur.long()?;
            walk(branches.get(usize::try_from(i).ok()?)?, cur, cols, cap)?;
        }
    }
    Some(())
}

fn bitmap(valid: &[bool]) -> Option<Vec<u8>> {
    if valid.iter().all(|&v| v) {
        return None;
    }
    let mut bits = vec![0u8; valid.len().div_ceil(8)];
    for (i, _) in valid.iter().enumerate().filter(|(_, &v)| v) {
        bits[i / 8] |= 1 << (i % 8);
    }
    Some(bits)
}

/// Columns of one capture, as Arrow buffers: (values, offsets for binary columns, validity bitmap when any is null).
type Buffers<'py> = (
    Bound<'py, PyBytes>,
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyBytes>>,
);

/// A compiled program: reads the bodies of one writer schema.
#[pyclass(frozen, module = "sdg_native")]
struct Reader {
    root: Node,
    outs: Vec<Out>,
}

#[pymethods]
impl Reader {
    #[new]
    fn new(program: &str) -> PyResult<Self> {
        let tree: Value = serde_json::from_str(program).map_err(|e| bad(format!("the program is not JSON: {e}")))?;
        let mut outs = Vec::new();
        let root = parse(&tree, &mut outs)?;
        let outs = outs
            .into_iter()
            .enumerate()
            .map(|(i, o)| o.ok_or_else(|| bad(format!("capture {i} is not in the program"))))
            .collect::<PyResult<Vec<Out>>>()?;
        Ok(Reader { root, outs })
    }

    /// For `values` (each `skip` bytes of head, then an Avro body; None or anything else does not pass): one byte a
    /// value (1: passes), and each captured column of the values that pass, in their order.
    fn read<'py>(
        &self,
        py: Python<'py>,
        values: &Bound<'py, PyList>,
        skip: usize,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<Buffers<'py>>)> {
        let mut cols: Vec<Column> = self
            .outs
            .iter()
            .map(|&out| Column {
                out,
                data: Vec::new(),
                offsets: vec![0],
                valid: Vec::new(),
            })
            .collect();
        for c in cols.iter_mut() {
            c.valid.reserve(values.len());
            if c.out == Out::Binary {
                c.offsets.reserve(values.len());
            } else {
                c.data.reserve(8 * values.len());
            }
        }
        let mut ok = vec![0u8; values.len()];
        let mut marks: Vec<(usize, usize, usize)> = Vec::with_capacity(cols.len());
        for (i, value) in values.iter().enumerate() {
            let Ok(bytes) = value.cast::<PyBytes>() else { continue };
            let buf = bytes.as_bytes();
            if buf.len() < skip {
                continue;
            }
            marks.clear();
            marks.extend(cols.iter().map(|c| (c.data.len(), c.offsets.len(), c.valid.len())));
            let mut cur = Cursor { buf, pos: skip };
            if walk(&self.root, &mut cur, &mut cols, None).is_some() && cur.pos == buf.len() {
                ok[i] = 1;
            } else {
                for (c, &(d, o, v)) in cols.iter_mut().zip(&marks) {
                    c.data.truncate(d);
                    c.offsets.truncate(o);
                    c.valid.truncate(v);
                }
            }
        }
        let columns = cols
            .iter()
            .map(|c| {
                let offsets = (c.out == Out::Binary)
                    .then(|| PyBytes::new(py, &c.offsets.iter().flat_map(|o| o.to_le_bytes()).collect::<Vec<u8>>()));
                (
                    PyBytes::new(py, &c.data),
                    offsets,
                    bitmap(&c.valid).map(|b| PyBytes::new(py, &b)),
                )
            })
            .collect();
        Ok((PyBytes::new(py, &ok), columns))
    }
}

/// One column of a batch, as `contents` takes it: its part's head (name, 0, type tag), the tag (`s` bytes, `i` an
/// i64, `f` an f64, `b` a byte), its validity bitmap (None: no nulls), its Arrow offset, its i32 offsets (`s`), its data.
type Part<'py> = (
    Bound<'py, PyBytes>,
    u8,
    Option<Bound<'py, PyBytes>>,
    usize,
    Option<Bound<'py, PyBytes>>,
    Bound<'py, PyBytes>,
);

/// Each row's chained content: `prefix`, then each column's part where it holds a value (its head, then the value:
/// bytes after their u32 length, numbers as their little-endian bytes). Returns the i32 offsets and the data of the
/// contents as a binary column.
#[pyfunction]
fn contents<'py>(
    py: Python<'py>,
    prefix: &[u8],
    rows: usize,
    columns: Vec<Part<'py>>,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let columns: Vec<_> = columns
        .iter()
        .map(|(head, tag, validity, offset, offsets, data)| {
            (
                head.as_bytes(),
                *tag,
                validity.as_ref().map(|v| v.as_bytes()),
                *offset,
                offsets.as_ref().map(|o| o.as_bytes()),
                data.as_bytes(),
            )
        })
        .collect();
    let at = |b: &[u8], i: usize| -> usize { i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as usize };
    for &(_, tag, validity, offset, offsets, data) in &columns {
        let width = match tag {
            b'i' | b'f' => 8,
            b'b' => 1,
            b's' => 0,
            _ => return Err(bad(format!("contents: no type tag {}", tag as char))),
        };
        let fits = validity.is_none_or(|v| v.len() * 8 >= offset + rows)
            && match offsets {
                Some(o) => {
                    tag == b's'
                        && o.len() >= 4 * (offset + rows + 1)
                        && (rows == 0 || at(o, offset + rows) <= data.len())
                }
                None => tag != b's' && data.len() >= width * (offset + rows),
            };
        if !fits {
            return Err(bad("contents: a column's buffers are shorter than its rows".into()));
        }
    }
    let mut out = Vec::new();
    let mut ends: Vec<u8> = Vec::with_capacity(4 * (rows + 1));
    ends.extend_from_slice(&0i32.to_le_bytes());
    for k in 0..rows {
        out.extend_from_slice(prefix);
        for &(head, tag, validity, offset, offsets, data) in &columns {
            let i = offset + k;
            if validity.is_some_and(|v| v[i / 8] & (1 << (i % 8)) == 0) {
                continue;
            }
            out.extend_from_slice(head);
            match (tag, offsets) {
                (b's', Some(o)) => {
                    let (start, end) = (at(o, i), at(o, i + 1));
                    out.extend_from_slice(&((end - start) as u32).to_le_bytes());
                    out.extend_from_slice(&data[start..end]);
                }
                (b'b', _) => out.push(data[i]),
                _ => out.extend_from_slice(&data[8 * i..8 * i + 8]),
            }
        }
        ends.extend_from_slice(
            &i32::try_from(out.len())
                .map_err(|_| bad("contents: over 2 GiB".into()))?
                .to_le_bytes(),
        );
    }
    Ok((PyBytes::new(py, &ends), PyBytes::new(py, &out)))
}

/// The hash chains of a batch of rows in their order: row k is in chain `chains[k]` (u32, little-endian), whose head
/// is (`seqs[c]`, `hashes[c]`) before the batch; its content is `data[offsets[k]..offsets[k + 1]]` (i32 offsets).
/// Returns each row's seq (i64, little-endian), its previous hash and its hash (64 hex digits each, end to end),
/// and the chains' heads after it.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn chain<'py>(
    py: Python<'py>,
    mut seqs: Vec<i64>,
    mut hashes: Vec<String>,
    chains: &[u8],
    offsets: &[u8],
    data: &[u8],
) -> PyResult<(
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Vec<i64>,
    Vec<String>,
)> {
    let rows: Vec<usize> = chains
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    let offsets: Vec<usize> = offsets
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    if offsets.len() != rows.len() + 1
        || offsets.windows(2).any(|w| w[0] > w[1])
        || offsets.last().is_some_and(|&e| e > data.len())
        || rows.iter().any(|&c| c >= seqs.len())
        || seqs.len() != hashes.len()
        || hashes.iter().any(|h| h.len() != 64)
    {
        return Err(bad(
            "chain: rows, offsets, contents and heads do not fit together".into()
        ));
    }
    let (mut out_seq, mut out_prev, mut out_hash) = (
        Vec::with_capacity(8 * rows.len()),
        Vec::with_capacity(64 * rows.len()),
        Vec::with_capacity(64 * rows.len()),
    );
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (k, &c) in rows.iter().enumerate() {
        let digest = Sha256::new()
            .chain_update(hashes[c].as_bytes())
            .chain_update(&data[offsets[k]..offsets[k + 1]])
            .finalize();
        let hex: String = digest
            .iter()
            .flat_map(|b| [HEX[(b >> 4) as usize] as char, HEX[(b & 15) as usize] as char])
            .collect();
        out_seq.extend_from_slice(&seqs[c].to_le_bytes());
        out_prev.extend_from_slice(hashes[c].as_bytes());
        out_hash.extend_from_slice(hex.as_bytes());
        seqs[c] += 1;
        hashes[c] = hex;
    }
    Ok((
        PyBytes::new(py, &out_seq),
        PyBytes::new(py, &out_prev),
        PyBytes::new(py, &out_hash),
        seqs,
        hashes,
    ))
}

#[pymodule]
fn sdg_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Reader>()?;
    m.add_function(wrap_pyfunction!(chain, m)?)?;
    m.add_function(wrap_pyfunction!(contents, m)?)?;
    Ok(())
}
