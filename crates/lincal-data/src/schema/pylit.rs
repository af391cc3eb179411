//! Parser for the subset of Python literals that pandas writes when it stores a list in a CSV
//! cell (`str(list)`): lists, strings in either quote style with escapes, ints, floats, `nan`,
//! `inf`, `None`, `True` and `False`. The reference dataset keeps paragraph lists, answer lists
//! and probability lists this way.

use std::fmt;

/// One parsed Python literal.
#[derive(Debug, Clone, PartialEq)]
pub enum PyLiteral {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<PyLiteral>),
}

impl PyLiteral {
    /// What Python's `str()` gives for a scalar (the reference stringifies list items this way);
    /// `None` for `None`, NaN and lists, which have no text in the reference's data handling.
    pub fn python_str(&self) -> Option<String> {
        match self {
            PyLiteral::Str(s) => Some(s.clone()),
            PyLiteral::Int(i) => Some(i.to_string()),
            PyLiteral::Float(f) if f.is_nan() => None,
            PyLiteral::Float(f) => Some(python_float_repr(*f)),
            PyLiteral::Bool(true) => Some("True".into()),
            PyLiteral::Bool(false) => Some("False".into()),
            PyLiteral::None | PyLiteral::List(_) => None,
        }
    }

    /// Short name of the kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PyLiteral::None => "None",
            PyLiteral::Bool(_) => "a bool",
            PyLiteral::Int(_) => "an int",
            PyLiteral::Float(_) => "a float",
            PyLiteral::Str(_) => "a string",
            PyLiteral::List(_) => "a list",
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, `.0` on integral values, and an exponent
/// of at least two digits with a sign outside [1e-4, 1e16).
pub fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    // Rust's Debug output uses the same digits and the same switch to scientific notation.
    let debug = format!("{value:?}");
    match debug.split_once('e') {
        None => debug,
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(digits) => ('-', digits),
                None => ('+', exponent),
            };
            let mantissa = mantissa.strip_suffix(".0").unwrap_or(mantissa);
            format!("{mantissa}e{sign}{digits:0>2}")
        }
    }
}

/// Where and why a literal failed to parse; `position` is a 1-based character index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyLiteralError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for PyLiteralError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.position, self.message)
    }
}

impl std::error::Error for PyLiteralError {}

/// Parses one literal; surrounding whitespace is allowed, anything else after it is an error.
pub fn parse_py_literal(text: &str) -> Result<PyLiteral, PyLiteralError> {
    let mut parser = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    let value = parser.value()?;
    parser.skip_whitespace();
    if parser.pos < parser.chars.len() {
        return Err(parser.error(format!(
            "unexpected {} after the literal",
            parser.describe_here()
        )));
    }
    Ok(value)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn error(&self, message: String) -> PyLiteralError {
        PyLiteralError {
            position: self.pos + 1,
            message,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn describe_here(&self) -> String {
        match self.peek() {
            Some(c) => format!("{c:?}"),
            None => "end of text".into(),
        }
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> Result<PyLiteral, PyLiteralError> {
        self.skip_whitespace();
        match self.peek() {
            None => Err(self.error("expected a value, found end of text".into())),
            Some('[') => self.list(),
            Some(quote @ ('\'' | '"')) => self.string(quote).map(PyLiteral::Str),
            Some(c) if c.is_ascii_digit() || matches!(c, '-' | '+' | '.') => self.number(),
            Some(c) if c.is_alphabetic() || c == '_' => self.name(),
            Some(_) => Err(self.error(format!("expected a value, found {}", self.describe_here()))),
        }
    }

    fn list(&mut self) -> Result<PyLiteral, PyLiteralError> {
        let open = self.pos;
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(']') => {
                    self.pos += 1;
                    return Ok(PyLiteral::List(items));
                }
                None => {
                    return Err(PyLiteralError {
                        position: open + 1,
                        message: "list is never closed with ']'".into(),
                    });
                }
                Some(_) => {}
            }
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(']') => {}
                None => {
                    return Err(PyLiteralError {
                        position: open + 1,
                        message: "list is never closed with ']'".into(),
                    });
                }
                Some(_) => {
                    return Err(self.error(format!(
                        "expected ',' or ']' in a list, found {}",
                        self.describe_here()
                    )));
                }
            }
        }
    }

    fn string(&mut self, quote: char) -> Result<String, PyLiteralError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(PyLiteralError {
                    position: open + 1,
                    message: format!("string opened with {quote} is never closed"),
                });
            };
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' => self.escape(&mut out)?,
                c => out.push(c),
            }
        }
    }

    /// Python's escapes after a backslash; an unknown escape keeps the backslash, as Python does.
    fn escape(&mut self, out: &mut String) -> Result<(), PyLiteralError> {
        let Some(c) = self.peek() else {
            return Err(self.error("backslash at the end of the text".into()));
        };
        self.pos += 1;
        match c {
            '\n' => {}
            '\\' | '\'' | '"' => out.push(c),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            'x' => out.push(self.hex_escape(2)?),
            'u' => out.push(self.hex_escape(4)?),
            'U' => out.push(self.hex_escape(8)?),
            '0'..='7' => {
                let mut code = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek().and_then(|d| d.to_digit(8)) {
                        Some(digit) => {
                            code = code * 8 + digit;
                            self.pos += 1;
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
        Ok(())
    }

    fn hex_escape(&mut self, digits: usize) -> Result<char, PyLiteralError> {
        let start = self.pos;
        let hex: String = self.chars.iter().skip(start).take(digits).collect();
        if hex.chars().count() != digits || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(PyLiteralError {
                position: start - 1,
                message: format!("escape needs {digits} hex digits, found {hex:?}"),
            });
        }
        self.pos += digits;
        let code = u32::from_str_radix(&hex, 16).unwrap_or(u32::MAX);
        char::from_u32(code).ok_or_else(|| PyLiteralError {
            position: start - 1,
            message: format!("escape \\{hex} is not a Unicode scalar value"),
        })
    }

    fn number(&mut self) -> Result<PyLiteral, PyLiteralError> {
        let start = self.pos;
        if matches!(self.peek(), Some('-' | '+')) {
            self.pos += 1;
        }
        // `-inf` and `-nan` are how Python writes those floats with a sign.
        if self.peek().is_some_and(char::is_alphabetic) {
            let negative = self.chars[start] == '-';
            return match self.name()? {
                PyLiteral::Float(f) if negative => Ok(PyLiteral::Float(-f)),
                PyLiteral::Float(f) => Ok(PyLiteral::Float(f)),
                other => Err(PyLiteralError {
                    position: start + 1,
                    message: format!("a sign cannot stand before {}", other.kind()),
                }),
            };
        }
        while self.peek().is_some_and(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_') || self.signed_exponent(c)
        }) {
            self.pos += 1;
        }
        let token: String = self.chars[start..self.pos]
            .iter()
            .filter(|&&c| c != '_')
            .collect();
        let is_float = token.contains(['.', 'e', 'E']);
        let parsed = if is_float {
            token.parse::<f64>().ok().map(PyLiteral::Float)
        } else {
            token.parse::<i64>().ok().map(PyLiteral::Int)
        };
        parsed.ok_or_else(|| PyLiteralError {
            position: start + 1,
            message: if !is_float
                && token
                    .trim_start_matches(['-', '+'])
                    .chars()
                    .all(|c| c.is_ascii_digit())
            {
                format!("integer {token} does not fit in 64 bits")
            } else {
                format!("{token:?} is not a number")
            },
        })
    }

    /// A sign is part of a number only right after its exponent marker (`1e-05`).
    fn signed_exponent(&self, c: char) -> bool {
        matches!(c, '-' | '+')
            && matches!(self.chars.get(self.pos.wrapping_sub(1)), Some('e' | 'E'))
    }

    fn name(&mut self) -> Result<PyLiteral, PyLiteralError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        match name.as_str() {
            "None" => Ok(PyLiteral::None),
            "True" => Ok(PyLiteral::Bool(true)),
            "False" => Ok(PyLiteral::Bool(false)),
            "nan" => Ok(PyLiteral::Float(f64::NAN)),
            "inf" => Ok(PyLiteral::Float(f64::INFINITY)),
            _ => Err(PyLiteralError {
                position: start + 1,
                message: format!(
                    "unknown name {name:?} (expected a quoted string, a number, None, True, False, \
                     nan or inf)"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr_matches_python() {
        // Values and expected strings checked against CPython 3.11's repr().
        assert_eq!(python_float_repr(0.7), "0.7");
        assert_eq!(python_float_repr(1912.0), "1912.0");
        assert_eq!(python_float_repr(1e16), "1e+16");
        assert_eq!(python_float_repr(1.5e16), "1.5e+16");
        assert_eq!(python_float_repr(1e-5), "1e-05");
        assert_eq!(python_float_repr(0.0001), "0.0001");
        assert_eq!(python_float_repr(-2.5e-7), "-2.5e-07");
        assert_eq!(python_float_repr(f64::NEG_INFINITY), "-inf");
    }
}
