//! The XML side of a PSKC file: a stream of events folded into flat
//! fields, one set for the container's header and one per key package.
//!
//! Elements are matched by local name only: vendors and tools write the
//! PSKC elements with or without a prefix, and the PBKDF2 parameters under
//! the `pkcs5` namespace, the `xenc11` one or none. A field is the path of
//! local names below the header or the key package (`Key/Data/Secret/
//! PlainValue`), or that path and an attribute (`Key@Algorithm`); its
//! value is the element's text with entities resolved, or the attribute's.
//!
//! Everything is bounded whatever the file says: nesting depth, fields per
//! package, bytes per value.

use std::io::BufRead;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::PskcError;

/// How deep elements may nest below the container.
const MAX_DEPTH: usize = 16;
/// Fields (elements with text, and attributes) in one key package or in
/// the header.
const MAX_FIELDS: usize = 128;
/// Bytes of one element's text or one attribute's value.
const MAX_VALUE_BYTES: usize = 16 * 1024;

/// The fields of one part of the file, in the order written.
#[derive(Default)]
pub struct Fields {
    entries: Vec<(String, String)>,
}

impl Fields {
    /// The value at `path`; an error when it is written more than once
    /// (which of two values would be meant is not for sls to guess).
    pub fn get(&self, path: &str) -> Result<Option<&str>, String> {
        let mut found = self.entries.iter().filter(|(p, _)| p == path);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(format!("{path} is written more than once"));
        }
        Ok(first)
    }

    /// Whether any field lies at or below `path`.
    pub fn has(&self, path: &str) -> bool {
        self.entries.iter().any(|(p, _)| {
            p.strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '@']))
        })
    }

    fn push(&mut self, path: String, value: String) -> Result<(), String> {
        if self.entries.len() >= MAX_FIELDS {
            return Err(format!("more than {MAX_FIELDS} elements and attributes"));
        }
        self.entries.push((path, value));
        Ok(())
    }
}

/// What the reader hands on: the header once (before the first package,
/// or at the end of a file without packages), then each package.
pub enum Part {
    Header(Fields),
    Package(Fields),
}

/// Reads a PSKC file part by part, handing each to `sink` as it ends; the
/// sink's error stops the reading.
pub fn read_parts<R: BufRead>(
    input: R,
    mut sink: impl FnMut(Part) -> Result<(), PskcError>,
) -> Result<(), PskcError> {
    let mut reader = Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut walk = Walk::default();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|error| PskcError::Xml {
                position: reader.error_position(),
                message: error.to_string(),
            })?;
        let at = reader.buffer_position();
        let bad = |message: String| PskcError::Xml {
            position: at,
            message,
        };
        match event {
            Event::Start(start) => {
                if let Some(header) = walk.open(&start).map_err(bad)? {
                    sink(header)?;
                }
            }
            Event::Empty(start) => {
                if let Some(header) = walk.open(&start).map_err(bad)? {
                    sink(header)?;
                }
                if let Some(part) = walk.close().map_err(bad)? {
                    sink(part)?;
                }
            }
            Event::End(_) => {
                if let Some(part) = walk.close().map_err(bad)? {
                    sink(part)?;
                }
            }
            Event::Text(text) => walk.text(&text.xml10_content()).map_err(bad)?,
            Event::CData(data) => walk.text(&data.xml10_content()).map_err(bad)?,
            Event::GeneralRef(reference) => {
                let resolved = match reference
                    .resolve_char_ref()
                    .map_err(|e| bad(e.to_string()))?
                {
                    Some(c) => c.to_string(),
                    None => {
                        let name = reference.xml10_content();
                        quick_xml::escape::resolve_xml_entity(&name)
                            .ok_or_else(|| bad(format!("unknown entity &{name};")))?
                            .to_owned()
                    }
                };
                walk.text(&resolved).map_err(bad)?;
            }
            Event::DocType(_) => {
                // A DTD could declare entities that expand without bound.
                return Err(bad("a document type declaration is not accepted".into()));
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
        buf.clear();
    }
    if !walk.stack.is_empty() {
        return Err(PskcError::Xml {
            position: reader.buffer_position(),
            message: "the file ends inside an element".into(),
        });
    }
    match walk.header.take() {
        Some(header) if walk.saw_container => sink(Part::Header(header)),
        _ if walk.saw_container => Ok(()),
        _ => Err(PskcError::NotPskc("no KeyContainer element".into())),
    }
}

/// Where the reader is: the open elements' local names, and the part
/// being collected.
#[derive(Default)]
struct Walk {
    stack: Vec<String>,
    /// The header's fields until it is handed on (at the first package).
    header: Option<Fields>,
    package: Option<Fields>,
    /// The text of the innermost open element so far.
    text: String,
    saw_container: bool,
}

impl Walk {
    /// Opens an element; returns the header when the first key package
    /// opens (RFC 6030 writes the header's elements before any package).
    fn open(&mut self, start: &BytesStart<'_>) -> Result<Option<Part>, String> {
        let name = start.local_name().as_ref().to_owned();
        self.text.clear();
        let mut header = None;
        match self.stack.len() {
            0 => {
                if name != "KeyContainer" {
                    return Err(format!("the document is a {name}, not a PSKC KeyContainer"));
                }
                if self.saw_container {
                    return Err("a second KeyContainer".into());
                }
                self.saw_container = true;
                self.header = Some(Fields::default());
                let version = attribute(start, "Version")?;
                if version.as_deref() != Some("1.0") {
                    return Err(format!(
                        "KeyContainer Version is {version:?}; sls reads PSKC 1.0 (RFC 6030)"
                    ));
                }
            }
            1 if name == "KeyPackage" => {
                header = self.header.take().map(Part::Header);
                self.package = Some(Fields::default());
            }
            1 if self.header.is_none() => {
                return Err(format!("{name} comes after the first KeyPackage"));
            }
            depth if depth > MAX_DEPTH => {
                return Err(format!("elements nest deeper than {MAX_DEPTH}"));
            }
            _ => {}
        }
        self.stack.push(name);
        let path = self.path();
        if let Some(fields) = self.fields() {
            for attr in start.attributes() {
                let attr = attr.map_err(|e| e.to_string())?;
                let key = attr.key.local_name().as_ref().to_owned();
                if attr.key.as_ref().starts_with("xmlns") {
                    continue;
                }
                let value = attr
                    .normalized_value(XmlVersion::Implicit1_0)
                    .map_err(|e| e.to_string())?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(format!(
                        "attribute {key} is longer than {MAX_VALUE_BYTES} bytes"
                    ));
                }
                fields.push(format!("{path}@{key}"), value.into_owned())?;
            }
        }
        Ok(header)
    }

    fn text(&mut self, text: &str) -> Result<(), String> {
        if self.text.len() + text.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "an element's text is longer than {MAX_VALUE_BYTES} bytes"
            ));
        }
        self.text.push_str(text);
        Ok(())
    }

    /// Closes the innermost element; returns a part that ended with it.
    fn close(&mut self) -> Result<Option<Part>, String> {
        let path = self.path();
        let text = std::mem::take(&mut self.text);
        let value = text.trim();
        if !value.is_empty()
            && let Some(fields) = self.fields()
        {
            fields.push(path, value.to_owned())?;
        }
        let depth = self.stack.len();
        self.stack.pop();
        if depth == 2 {
            return Ok(self.package.take().map(Part::Package));
        }
        Ok(None)
    }

    /// The path of the innermost element below its part (the container
    /// for the header, the key package for a package).
    fn path(&self) -> String {
        let skip = if self.package.is_some() { 2 } else { 1 };
        self.stack.get(skip..).unwrap_or_default().join("/")
    }

    fn fields(&mut self) -> Option<&mut Fields> {
        if self.stack.len() < 2 {
            return None;
        }
        match (&mut self.package, &mut self.header) {
            (Some(package), _) => Some(package),
            (None, Some(header)) => Some(header),
            (None, None) => None,
        }
    }
}

/// The value of attribute `name` (local name) of `start`.
fn attribute(start: &BytesStart<'_>, name: &str) -> Result<Option<String>, String> {
    for attr in start.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        if attr.key.local_name().as_ref() == name {
            return Ok(Some(
                attr.normalized_value(XmlVersion::Implicit1_0)
                    .map_err(|e| e.to_string())?
                    .into_owned(),
            ));
        }
    }
    Ok(None)
}
