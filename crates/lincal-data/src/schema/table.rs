//! Column access to the reference dataset's tables, whether the user has the CSV files of the HF
//! dataset or the Parquet files of its automatic conversion. Each row comes with its position
//! (the CSV line where the record starts; the 1-based row number for Parquet) so that a bad cell
//! is reported as `file:line: column X: ...`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::{Type, TypePtr};

use super::pylit::{PyLiteral, parse_py_literal};
use crate::{DataError, Result};

/// File formats recognised by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Parquet,
    Json,
    JsonLines,
}

pub(crate) fn format_of(path: &Path) -> Result<Format> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("parquet") => Ok(Format::Parquet),
        Some("json") => Ok(Format::Json),
        Some("jsonl") => Ok(Format::JsonLines),
        _ => Err(DataError::File {
            path: path.to_path_buf(),
            message: "unknown file type: expected a .csv, .parquet, .json or .jsonl extension"
                .into(),
        }),
    }
}

/// Cells that pandas (and so the reference, through HF `datasets`) reads from a CSV as missing.
const PANDAS_MISSING: &[&str] = &[
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// One cell of a row, with everything needed to report a problem with it.
pub(crate) struct Cell<'a> {
    pub path: &'a Path,
    pub line: usize,
    pub column: &'a str,
    pub value: Option<&'a str>,
}

impl Cell<'_> {
    pub fn error(&self, message: impl std::fmt::Display) -> DataError {
        DataError::Row {
            path: self.path.to_path_buf(),
            line: self.line,
            message: format!("column {}: {message}", self.column),
        }
    }

    pub fn text(&self) -> Option<String> {
        self.value.map(str::to_owned)
    }

    pub fn required_text(&self) -> Result<String> {
        self.text()
            .ok_or_else(|| self.error("is empty; every row needs one"))
    }

    pub fn number(&self) -> Result<Option<f64>> {
        let Some(text) = self.value else {
            return Ok(None);
        };
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| self.error(format!("{text:?} is not a number")))?;
        Ok((!value.is_nan()).then_some(value))
    }

    fn list(&self) -> Result<Option<Vec<PyLiteral>>> {
        let Some(text) = self.value else {
            return Ok(None);
        };
        match parse_py_literal(text) {
            Ok(PyLiteral::List(items)) => Ok(Some(items)),
            // A bare `nan` is how a missing list survives a round trip through pandas.
            Ok(PyLiteral::Float(f)) if f.is_nan() => Ok(None),
            Ok(other) => Err(self.error(format!("expected a Python list, found {}", other.kind()))),
            Err(e) => Err(self.error(format!("not a valid Python list literal {e}"))),
        }
    }

    /// A stringified list, each item converted by `item(index, literal)`.
    fn list_of<T>(&self, item: impl Fn(usize, &PyLiteral) -> Result<T>) -> Result<Option<Vec<T>>> {
        let Some(items) = self.list()? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, literal)| item(i, literal))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A stringified list of texts; numbers become Python's `str()` of them, and `None`/`nan`
    /// items become `None` (the reference treats them as NaN).
    pub fn text_list(&self) -> Result<Option<Vec<Option<String>>>> {
        self.list_of(|i, item| match item {
            PyLiteral::List(_) => {
                Err(self.error(format!("item {i} is a nested list; expected a string")))
            }
            other => Ok(other.python_str()),
        })
    }

    /// A stringified list of numbers; `None`/`nan` items become NaN.
    pub fn number_list(&self) -> Result<Option<Vec<f64>>> {
        self.list_of(|i, item| match item {
            PyLiteral::Int(v) => Ok(*v as f64),
            PyLiteral::Float(v) => Ok(*v),
            PyLiteral::None => Ok(f64::NAN),
            other => Err(self.error(format!("item {i} is {}; expected a number", other.kind()))),
        })
    }
}

/// One row of a table, its cells in the order of the columns asked for.
pub(crate) struct TableRow<'a> {
    path: &'a Path,
    line: usize,
    columns: &'a [&'a str],
    cells: Vec<Option<String>>,
}

impl TableRow<'_> {
    pub fn cell(&self, index: usize) -> Cell<'_> {
        Cell {
            path: self.path,
            line: self.line,
            column: self.columns[index],
            value: self.cells[index].as_deref(),
        }
    }
}

/// Calls `each_row` for every row of a CSV or Parquet table with the cells of `columns` (in that
/// order). A column listed in `required` must be present in the header; other columns may be
/// absent, and then read as missing cells.
pub(crate) fn for_each_row(
    path: &Path,
    columns: &[&str],
    required: usize,
    mut each_row: impl FnMut(TableRow<'_>) -> Result<()>,
) -> Result<()> {
    match format_of(path)? {
        Format::Csv => read_csv(path, columns, required, &mut each_row),
        Format::Parquet => read_parquet(path, columns, required, &mut each_row),
        Format::Json | Format::JsonLines => Err(DataError::File {
            path: path.to_path_buf(),
            message: "the reference dataset is read from .csv or .parquet files".into(),
        }),
    }
}

/// Where each wanted column sits in the file's header; `None` for an absent optional column.
fn locate_columns(
    path: &Path,
    header: &[String],
    columns: &[&str],
    required: usize,
) -> Result<Vec<Option<usize>>> {
    let positions: Vec<Option<usize>> = columns
        .iter()
        .map(|name| header.iter().position(|h| h == name))
        .collect();
    let missing: Vec<&str> = columns[..required]
        .iter()
        .zip(&positions)
        .filter(|(_, position)| position.is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(positions)
    } else {
        Err(DataError::File {
            path: path.to_path_buf(),
            message: format!(
                "missing column(s) {}; the file has {}. \
                 Is this the right split of the reference dataset?",
                missing.join(", "),
                header.join(", ")
            ),
        })
    }
}

/// What a table reader hands each row to.
type EachRow<'f> = &'f mut dyn FnMut(TableRow<'_>) -> Result<()>;

fn open_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_csv(path: &Path, columns: &[&str], required: usize, each_row: EachRow) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(open_file(path)?);
    let csv_error = |e: csv::Error| {
        let line = e.position().map_or(1, |p| p.line() as usize);
        DataError::Row {
            path: path.to_path_buf(),
            line,
            message: format!("malformed CSV: {e}"),
        }
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(str::to_owned)
        .collect();
    let positions = locate_columns(path, &header, columns, required)?;
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_error)? {
        let line = record.position().map_or(0, |p| p.line() as usize);
        let cells = positions
            .iter()
            .map(|position| {
                position
                    .and_then(|i| record.get(i))
                    .filter(|text| !PANDAS_MISSING.contains(text))
                    .map(str::to_owned)
            })
            .collect();
        each_row(TableRow {
            path,
            line,
            columns,
            cells,
        })?;
    }
    Ok(())
}

fn open_parquet(path: &Path) -> Result<SerializedFileReader<File>> {
    SerializedFileReader::new(open_file(path)?).map_err(|e| DataError::File {
        path: path.to_path_buf(),
        message: format!("not a readable Parquet file: {e}"),
    })
}

/// The schema of a Parquet file: its top-level columns.
fn root_schema(reader: &SerializedFileReader<File>) -> TypePtr {
    reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema_ptr()
}

/// Keeps of `ty` only the fields named by `wanted` (dotted paths relative to `ty`), so that the
/// Parquet reader decodes nothing else. A path naming a group keeps the whole group.
fn projection(ty: &TypePtr, wanted: &[&str]) -> Option<TypePtr> {
    if wanted.iter().any(|path| path.is_empty()) {
        return Some(ty.clone());
    }
    if ty.is_primitive() {
        return None;
    }
    let fields: Vec<TypePtr> = ty
        .get_fields()
        .iter()
        .filter_map(|field| {
            let below: Vec<&str> = wanted
                .iter()
                .filter_map(|path| match path.split_once('.') {
                    Some((head, rest)) if head == field.name() => Some(rest),
                    None if *path == field.name() => Some(""),
                    _ => None,
                })
                .collect();
            if below.is_empty() {
                None
            } else {
                projection(field, &below)
            }
        })
        .collect();
    if fields.is_empty() {
        return None;
    }
    let info = ty.get_basic_info();
    let mut builder = Type::group_type_builder(info.name())
        .with_fields(fields)
        .with_converted_type(info.converted_type())
        .with_logical_type(info.logical_type_ref().cloned());
    if info.has_repetition() {
        builder = builder.with_repetition(info.repetition());
    }
    builder.build().ok().map(Arc::new)
}

/// Iterates the rows of a Parquet file restricted to `wanted` columns, with 1-based row numbers.
pub(crate) fn for_each_parquet_row(
    path: &Path,
    wanted: &[&str],
    mut each_row: impl FnMut(usize, parquet::record::Row) -> Result<()>,
) -> Result<()> {
    let reader = open_parquet(path)?;
    let schema = root_schema(&reader);
    let projected = projection(&schema, wanted).map(|ty| ty.as_ref().clone());
    let rows = reader
        .get_row_iter(projected)
        .map_err(|e| DataError::File {
            path: path.to_path_buf(),
            message: format!("cannot read Parquet rows: {e}"),
        })?;
    for (index, row) in rows.enumerate() {
        let row = row.map_err(|e| DataError::Row {
            path: path.to_path_buf(),
            line: index + 1,
            message: format!("cannot decode Parquet row: {e}"),
        })?;
        each_row(index + 1, row)?;
    }
    Ok(())
}

fn read_parquet(path: &Path, columns: &[&str], required: usize, each_row: EachRow) -> Result<()> {
    let header: Vec<String> = root_schema(&open_parquet(path)?)
        .get_fields()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    let positions = locate_columns(path, &header, columns, required)?;
    let present: Vec<&str> = columns
        .iter()
        .zip(&positions)
        .filter(|(_, p)| p.is_some())
        .map(|(c, _)| *c)
        .collect();
    for_each_parquet_row(path, &present, |line, row| {
        let row_columns = row.into_columns();
        let cells = columns
            .iter()
            .map(
                |name| match row_columns.iter().find(|(column, _)| column == name) {
                    None => Ok(None),
                    Some((_, field)) => scalar_text(field).map_err(|message| DataError::Row {
                        path: path.to_path_buf(),
                        line,
                        message: format!("column {name}: {message}"),
                    }),
                },
            )
            .collect::<Result<Vec<_>>>()?;
        each_row(TableRow {
            path,
            line,
            columns,
            cells,
        })
    })
}

/// The text of a scalar Parquet value, as the CSV would have held it; NaN and null are missing.
fn scalar_text(field: &Field) -> std::result::Result<Option<String>, String> {
    Ok(Some(match field {
        Field::Null => return Ok(None),
        Field::Str(s) => s.clone(),
        Field::Bytes(b) => String::from_utf8(b.data().to_vec())
            .map_err(|_| "binary value is not UTF-8 text".to_string())?,
        Field::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Field::Byte(v) => v.to_string(),
        Field::Short(v) => v.to_string(),
        Field::Int(v) => v.to_string(),
        Field::Long(v) => v.to_string(),
        Field::UByte(v) => v.to_string(),
        Field::UShort(v) => v.to_string(),
        Field::UInt(v) => v.to_string(),
        Field::ULong(v) => v.to_string(),
        Field::Float(v) if v.is_nan() => return Ok(None),
        Field::Float(v) => super::pylit::python_float_repr(f64::from(*v)),
        Field::Double(v) if v.is_nan() => return Ok(None),
        Field::Double(v) => super::pylit::python_float_repr(*v),
        other => {
            return Err(format!(
                "expected a string or a number, found Parquet value {other}"
            ));
        }
    }))
}
