//! A small XML-RPC codec, enough to talk to a Koji hub: build a `methodCall`, parse a
//! `methodResponse` into [`Value`]s or a fault.
//!
//! Koji marshals with `allow_none` (so `<nil/>` appears) and uses `<i8>` for integers beyond 32 bits;
//! both are accepted. Keyword arguments travel as a trailing struct carrying `"__starstar": true`
//! (see [`kwargs`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use quick_xml::Reader;
use quick_xml::events::Event;
use thiserror::Error;

/// One XML-RPC value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Bool(bool),
    String(String),
    Double(f64),
    /// `dateTime.iso8601`, kept as its text: nothing here computes with dates.
    DateTime(String),
    Base64(Vec<u8>),
    Struct(BTreeMap<String, Value>),
    Array(Vec<Value>),
    Nil,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_struct(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Struct(map) => Some(map),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// A struct member, if this is a struct and has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_struct().and_then(|map| map.get(key))
    }

    fn write_xml(&self, out: &mut String) {
        out.push_str("<value>");
        match self {
            Value::Int(n) if i32::try_from(*n).is_ok() => {
                let _ = write!(out, "<int>{n}</int>");
            }
            Value::Int(n) => {
                let _ = write!(out, "<i8>{n}</i8>");
            }
            Value::Bool(b) => {
                let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
            }
            Value::String(s) => {
                out.push_str("<string>");
                escape_into(s, out);
                out.push_str("</string>");
            }
            Value::Double(d) => {
                let _ = write!(out, "<double>{d}</double>");
            }
            Value::DateTime(s) => {
                out.push_str("<dateTime.iso8601>");
                escape_into(s, out);
                out.push_str("</dateTime.iso8601>");
            }
            Value::Base64(bytes) => {
                out.push_str("<base64>");
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
                out.push_str("</base64>");
            }
            Value::Struct(map) => {
                out.push_str("<struct>");
                for (key, value) in map {
                    out.push_str("<member><name>");
                    escape_into(key, out);
                    out.push_str("</name>");
                    value.write_xml(out);
                    out.push_str("</member>");
                }
                out.push_str("</struct>");
            }
            Value::Array(items) => {
                out.push_str("<array><data>");
                for item in items {
                    item.write_xml(out);
                }
                out.push_str("</data></array>");
            }
            Value::Nil => out.push_str("<nil/>"),
        }
        out.push_str("</value>");
    }

    /// This value as a standalone `<value>` element.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write_xml(&mut out);
        out
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Koji's keyword-argument convention: a struct with `__starstar: true` as the last parameter.
pub fn kwargs<I>(pairs: I) -> Value
where
    I: IntoIterator<Item = (&'static str, Value)>,
{
    let mut map: BTreeMap<String, Value> =
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    map.insert("__starstar".to_owned(), Value::Bool(true));
    Value::Struct(map)
}

/// The body of a call.
pub fn method_call(method: &str, params: &[Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodCall><methodName>");
    escape_into(method, &mut out);
    out.push_str("</methodName><params>");
    for param in params {
        out.push_str("<param>");
        param.write_xml(&mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>\n");
    out
}

#[derive(Debug, Error, PartialEq)]
pub enum XmlRpcError {
    #[error("XML-RPC fault {code}: {message}")]
    Fault { code: i64, message: String },
    #[error("malformed XML-RPC: {0}")]
    Malformed(String),
}

/// A parsed element: name, children and the text directly inside it.
#[derive(Debug, Default)]
struct Node {
    name: String,
    children: Vec<Node>,
    text: String,
}

/// Nesting limit: answers from a hub are a few levels deep; a deeper document is hostile.
const MAX_DEPTH: usize = 64;

fn parse_tree(xml: &str) -> Result<Node, XmlRpcError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Node> = vec![Node::default()];
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlRpcError::Malformed(e.to_string()))?;
        match event {
            Event::Start(start) => {
                if stack.len() > MAX_DEPTH {
                    return Err(XmlRpcError::Malformed(format!(
                        "nesting deeper than {MAX_DEPTH}"
                    )));
                }
                stack.push(Node {
                    name: start.local_name().as_ref().to_owned(),
                    ..Node::default()
                });
            }
            Event::Empty(empty) => {
                let node = Node {
                    name: empty.local_name().as_ref().to_owned(),
                    ..Node::default()
                };
                stack
                    .last_mut()
                    .ok_or_else(|| XmlRpcError::Malformed("element outside document".into()))?
                    .children
                    .push(node);
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| XmlRpcError::Malformed("unbalanced end tag".into()))?;
                stack
                    .last_mut()
                    .ok_or_else(|| XmlRpcError::Malformed("unbalanced end tag".into()))?
                    .children
                    .push(node);
            }
            Event::Text(text) => {
                // Entities arrive as separate GeneralRef events, so text holds none.
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text.xml10_content());
                }
            }
            Event::CData(data) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&data);
                }
            }
            Event::GeneralRef(reference) => {
                let name: &str = &reference;
                let resolved = resolve_reference(name)
                    .ok_or_else(|| XmlRpcError::Malformed(format!("unknown entity &{name};")))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push(resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err(XmlRpcError::Malformed(
            "document ends inside an element".into(),
        ));
    }
    let mut document = stack.pop().unwrap_or_default();
    document
        .children
        .pop()
        .ok_or_else(|| XmlRpcError::Malformed("empty document".into()))
}

fn resolve_reference(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let code = if let Some(hex) = name.strip_prefix("#x") {
                u32::from_str_radix(hex, 16).ok()?
            } else {
                name.strip_prefix('#')?.parse().ok()?
            };
            char::from_u32(code)
        }
    }
}

fn child<'a>(node: &'a Node, name: &str) -> Result<&'a Node, XmlRpcError> {
    node.children
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| XmlRpcError::Malformed(format!("<{}> without <{name}>", node.name)))
}

fn parse_value(node: &Node) -> Result<Value, XmlRpcError> {
    let Some(typed) = node.children.first() else {
        // A bare <value>text</value> is a string.
        return Ok(Value::String(node.text.clone()));
    };
    let text = typed.text.trim();
    let bad = |what: &str| XmlRpcError::Malformed(format!("<{}> holds {what}", typed.name));
    Ok(match typed.name.as_str() {
        "int" | "i4" | "i8" => Value::Int(text.parse().map_err(|_| bad("a non-integer"))?),
        "boolean" => match text {
            "1" => Value::Bool(true),
            "0" => Value::Bool(false),
            _ => return Err(bad("neither 0 nor 1")),
        },
        "string" => Value::String(typed.text.clone()),
        "double" => Value::Double(text.parse().map_err(|_| bad("a non-number"))?),
        "dateTime.iso8601" => Value::DateTime(text.to_owned()),
        "base64" => {
            let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            Value::Base64(
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|_| bad("invalid base64"))?,
            )
        }
        "nil" => Value::Nil,
        "struct" => {
            let mut map = BTreeMap::new();
            for member in typed.children.iter().filter(|c| c.name == "member") {
                let name = child(member, "name")?.text.clone();
                let value = parse_value(child(member, "value")?)?;
                map.insert(name, value);
            }
            Value::Struct(map)
        }
        "array" => {
            let data = child(typed, "data")?;
            let items = data
                .children
                .iter()
                .filter(|c| c.name == "value")
                .map(parse_value)
                .collect::<Result<Vec<_>, _>>()?;
            Value::Array(items)
        }
        other => return Err(XmlRpcError::Malformed(format!("unknown type <{other}>"))),
    })
}

/// The single return value of a `methodResponse`, or its fault.
pub fn parse_response(xml: &str) -> Result<Value, XmlRpcError> {
    let root = parse_tree(xml)?;
    if root.name != "methodResponse" {
        return Err(XmlRpcError::Malformed(format!(
            "root element is <{}>, not <methodResponse>",
            root.name
        )));
    }
    if let Some(fault) = root.children.iter().find(|c| c.name == "fault") {
        let value = parse_value(child(fault, "value")?)?;
        return Err(XmlRpcError::Fault {
            code: value.get("faultCode").and_then(Value::as_i64).unwrap_or(0),
            message: value
                .get("faultString")
                .and_then(Value::as_str)
                .unwrap_or("(no faultString)")
                .to_owned(),
        });
    }
    let params = child(&root, "params")?;
    let param = child(params, "param")?;
    parse_value(child(param, "value")?)
}

/// The method name and parameters of a `methodCall` (what a hub receives); used by test hubs
/// and kept here so the codec is tested in both directions.
pub fn parse_call(xml: &str) -> Result<(String, Vec<Value>), XmlRpcError> {
    let root = parse_tree(xml)?;
    if root.name != "methodCall" {
        return Err(XmlRpcError::Malformed(format!(
            "root element is <{}>, not <methodCall>",
            root.name
        )));
    }
    let method = child(&root, "methodName")?.text.trim().to_owned();
    let mut params = Vec::new();
    if let Some(list) = root.children.iter().find(|c| c.name == "params") {
        for param in list.children.iter().filter(|c| c.name == "param") {
            params.push(parse_value(child(param, "value")?)?);
        }
    }
    Ok((method, params))
}

/// A `methodResponse` carrying `value` (for test hubs).
pub fn response(value: &Value) -> String {
    format!(
        "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n{}\n</param>\n</params>\n</methodResponse>\n",
        value.to_xml()
    )
}

/// A `methodResponse` carrying a fault (for test hubs).
pub fn fault_response(code: i64, message: &str) -> String {
    let fault = Value::Struct(BTreeMap::from([
        ("faultCode".to_owned(), Value::Int(code)),
        ("faultString".to_owned(), Value::String(message.to_owned())),
    ]));
    format!(
        "<?xml version='1.0'?>\n<methodResponse>\n<fault>\n{}\n</fault>\n</methodResponse>\n",
        fault.to_xml()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_carry_kwargs_as_a_starstar_struct() {
        let body = method_call(
            "listRPMs",
            &[kwargs([
                ("buildID", Value::Int(2_654_321)),
                ("arches", Value::Array(vec!["x86_64".into()])),
            ])],
        );
        assert!(body.contains("<methodName>listRPMs</methodName>"));
        assert!(body.contains("<name>__starstar</name><value><boolean>1</boolean></value>"));
        let (method, params) = parse_call(&body).expect("round trip");
        assert_eq!(method, "listRPMs");
        assert_eq!(params[0].get("buildID"), Some(&Value::Int(2_654_321)));
        assert_eq!(params[0].get("__starstar"), Some(&Value::Bool(true)));
    }

    #[test]
    fn every_value_type_round_trips() {
        let value = Value::Struct(BTreeMap::from([
            ("i".to_owned(), Value::Int(-7)),
            ("big".to_owned(), Value::Int(1 << 40)),
            ("b".to_owned(), Value::Bool(false)),
            ("s".to_owned(), Value::String("a<b & 'c'".into())),
            ("d".to_owned(), Value::Double(1.5)),
            ("t".to_owned(), Value::DateTime("20250101T00:00:00".into())),
            ("raw".to_owned(), Value::Base64(vec![0, 1, 2, 255])),
            (
                "list".to_owned(),
                Value::Array(vec![Value::Nil, Value::Int(1)]),
            ),
        ]));
        let xml = response(&value);
        assert!(xml.contains("<i8>1099511627776</i8>"));
        assert_eq!(parse_response(&xml), Ok(value));
    }

    #[test]
    fn hub_style_answers_parse() {
        // The shapes a Koji hub emits: i4, i8, nil, untyped strings and whitespace between nodes.
        let xml = r#"<?xml version='1.0'?>
<methodResponse>
<params>
<param>
<value><struct>
<member>
<name>id</name>
<value><i4>2654321</i4></value>
</member>
<member>
<name>size</name>
<value><i8>5000000000</i8></value>
</member>
<member>
<name>volume_name</name>
<value>DEFAULT</value>
</member>
<member>
<name>extra</name>
<value><nil/></value>
</member>
<member>
<name>note</name>
<value><string>x &amp; y &#65;</string></value>
</member>
</struct></value>
</param>
</params>
</methodResponse>
"#;
        let value = parse_response(xml).expect("parses");
        assert_eq!(value.get("id"), Some(&Value::Int(2_654_321)));
        assert_eq!(value.get("size"), Some(&Value::Int(5_000_000_000)));
        assert_eq!(
            value.get("volume_name").and_then(Value::as_str),
            Some("DEFAULT")
        );
        assert_eq!(value.get("extra"), Some(&Value::Nil));
        assert_eq!(value.get("note").and_then(Value::as_str), Some("x & y A"));
    }

    #[test]
    fn faults_become_errors() {
        let xml = fault_response(1000, "No such build: 'kernel-1-1'");
        assert_eq!(
            parse_response(&xml),
            Err(XmlRpcError::Fault {
                code: 1000,
                message: "No such build: 'kernel-1-1'".into()
            })
        );
    }

    #[test]
    fn malformed_documents_are_refused() {
        for xml in [
            "",
            "<methodResponse>",
            "<html><body>502</body></html>",
            "<methodResponse><params><param><value><int>x</int></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><boolean>2</boolean></value></param></params></methodResponse>",
            "<methodResponse><params><param><value><blob/></value></param></params></methodResponse>",
            "<methodResponse><params></params></methodResponse>",
        ] {
            assert!(
                matches!(parse_response(xml), Err(XmlRpcError::Malformed(_))),
                "{xml:?} must be refused"
            );
        }
        let deep = format!(
            "<methodResponse>{}{}</methodResponse>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert!(matches!(
            parse_response(&deep),
            Err(XmlRpcError::Malformed(_))
        ));
    }
}
