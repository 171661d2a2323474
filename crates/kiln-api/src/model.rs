//! botocore's model of the Image Builder API, embedded: the members, types and required members
//! of every shape. Requests are checked against it and responses cut down to it, generically,
//! so that no operation can answer with a member the SDKs do not know or a type they cannot
//! read.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

const MODEL: &str = include_str!("../model/imagebuilder-2019-12-02.json");

/// A shape's type, as the model names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeType {
    /// A JSON object with named members.
    Structure,
    /// A JSON array.
    List,
    /// A JSON object with any keys.
    Map,
    /// Text.
    String,
    /// A whole number.
    Integer,
    /// A whole number (64-bit).
    Long,
    /// A number with a fraction.
    Double,
    /// `true` or `false`.
    Boolean,
    /// A time (the model says in which form).
    Timestamp,
    /// Anything else the model may add.
    Other,
}

/// Where a request member is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// In the JSON body.
    Body,
    /// In the query string.
    Query,
    /// In the URI path.
    Uri,
    /// In a header.
    Header,
}

/// A member of a structure.
#[derive(Debug, Clone)]
pub struct Member {
    /// The member's name.
    pub name: String,
    /// Its shape.
    pub shape: String,
    /// Where a request carries it.
    pub location: Location,
    /// The name in that place (query key), when it differs.
    pub location_name: Option<String>,
}

/// One shape of the model.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Its type.
    pub ty: ShapeType,
    /// Structure members, in model order.
    pub members: Vec<Member>,
    /// Required members of a structure.
    pub required: Vec<String>,
    /// A list's member shape, a map's value shape.
    pub item: Option<String>,
    /// Allowed values of an enum string.
    pub values: Vec<String>,
    /// The least and most a number may be, or a string's length, or a list's.
    pub min: Option<i64>,
    /// See `min`.
    pub max: Option<i64>,
    /// An error shape's HTTP status.
    pub error_status: Option<u16>,
}

/// An operation of the model.
#[derive(Debug, Clone)]
pub struct OperationModel {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// `/GetImage`, `/tags/{resourceArn}`.
    pub uri: String,
    /// The input shape.
    pub input: Option<String>,
    /// The output shape.
    pub output: Option<String>,
}

/// The whole model.
#[derive(Debug)]
pub struct Model {
    shapes: HashMap<String, Shape>,
    operations: HashMap<String, OperationModel>,
}

/// A request member that is not what the model says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `components[1].componentArn`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// True when the value has the right type but is out of range or not an allowed value
    /// (an invalid parameter value, not a malformed request).
    pub value: bool,
}

impl Model {
    /// The embedded model, read once.
    pub fn get() -> &'static Model {
        static MODEL_CELL: OnceLock<Model> = OnceLock::new();
        MODEL_CELL.get_or_init(|| {
            // The file is part of the binary and checked by the tests: it always parses.
            let raw: Value = serde_json::from_str(MODEL).unwrap_or(Value::Null);
            Model::from_json(&raw)
        })
    }

    fn from_json(raw: &Value) -> Model {
        let mut shapes = HashMap::new();
        if let Some(all) = raw.get("shapes").and_then(Value::as_object) {
            for (name, s) in all {
                shapes.insert(name.clone(), shape_of(s));
            }
        }
        let mut operations = HashMap::new();
        if let Some(all) = raw.get("operations").and_then(Value::as_object) {
            for (name, o) in all {
                let text = |p: &str| o.pointer(p).and_then(Value::as_str).map(str::to_string);
                operations.insert(
                    name.clone(),
                    OperationModel {
                        method: text("/http/method").unwrap_or_default(),
                        uri: text("/http/requestUri").unwrap_or_default(),
                        input: text("/input/shape"),
                        output: text("/output/shape"),
                    },
                );
            }
        }
        Model { shapes, operations }
    }

    /// A shape by name.
    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.shapes.get(name)
    }

    /// An operation by name.
    pub fn operation(&self, name: &str) -> Option<&OperationModel> {
        self.operations.get(name)
    }

    /// The HTTP status the model gives an error code.
    pub fn error_status(&self, code: &str) -> Option<u16> {
        self.shapes.get(code).and_then(|s| s.error_status)
    }

    /// Checks `value` against shape `name`: types of every known member, required members,
    /// enums and bounds. Unknown members are ignored (newer clients send them).
    pub fn check(&self, name: &str, value: &Value, path: &str) -> Result<(), FieldError> {
        let Some(shape) = self.shapes.get(name) else {
            return Ok(());
        };
        let field = || {
            if path.is_empty() {
                "(the request)".to_string()
            } else {
                path.to_string()
            }
        };
        let bad = |message: String| FieldError {
            field: field(),
            message,
            value: false,
        };
        let out_of_range = |message: String| FieldError {
            field: field(),
            message,
            value: true,
        };
        match shape.ty {
            ShapeType::Structure => {
                let Some(o) = value.as_object() else {
                    return Err(bad(format!("must be an object, not {}", kind(value))));
                };
                for m in &shape.members {
                    if let Some(v) = o.get(&m.name) {
                        if !v.is_null() {
                            self.check(&m.shape, v, &join(path, &m.name))?;
                        }
                    }
                }
                for r in &shape.required {
                    if o.get(r).is_none_or(Value::is_null) {
                        return Err(FieldError {
                            field: join(path, r),
                            message: "is required".into(),
                            value: false,
                        });
                    }
                }
            }
            ShapeType::List => {
                let Some(items) = value.as_array() else {
                    return Err(bad(format!("must be a list, not {}", kind(value))));
                };
                bounds(shape, items.len() as i64, "items").map_err(out_of_range)?;
                if let Some(item) = &shape.item {
                    for (i, v) in items.iter().enumerate() {
                        self.check(item, v, &format!("{path}[{i}]"))?;
                    }
                }
            }
            ShapeType::Map => {
                let Some(o) = value.as_object() else {
                    return Err(bad(format!("must be an object, not {}", kind(value))));
                };
                bounds(shape, o.len() as i64, "entries").map_err(out_of_range)?;
                if let Some(item) = &shape.item {
                    for (k, v) in o {
                        self.check(item, v, &join(path, k))?;
                    }
                }
            }
            ShapeType::String => {
                let Some(s) = value.as_str() else {
                    return Err(bad(format!("must be a string, not {}", kind(value))));
                };
                if !shape.values.is_empty() && !shape.values.iter().any(|v| v == s) {
                    return Err(out_of_range(format!(
                        "`{s}` is not one of {}",
                        shape.values.join(", ")
                    )));
                }
                bounds(shape, s.chars().count() as i64, "characters").map_err(out_of_range)?;
            }
            ShapeType::Integer | ShapeType::Long => {
                let Some(n) = value.as_i64() else {
                    return Err(bad(format!("must be a whole number, not {}", kind(value))));
                };
                if let Some(min) = shape.min.filter(|m| n < *m) {
                    return Err(out_of_range(format!("must be at least {min}")));
                }
                if let Some(max) = shape.max.filter(|m| n > *m) {
                    return Err(out_of_range(format!("must be at most {max}")));
                }
            }
            ShapeType::Double => {
                if !value.is_number() {
                    return Err(bad(format!("must be a number, not {}", kind(value))));
                }
            }
            ShapeType::Boolean => {
                if !value.is_boolean() {
                    return Err(bad(format!("must be true or false, not {}", kind(value))));
                }
            }
            ShapeType::Timestamp => {
                if !(value.is_number() || value.is_string()) {
                    return Err(bad(format!("must be a time, not {}", kind(value))));
                }
            }
            ShapeType::Other => {}
        }
        Ok(())
    }

    /// `value` with only the members shape `name` has, recursively, and without nulls: what
    /// an SDK reading the response knows.
    pub fn project(&self, name: &str, value: Value) -> Value {
        let Some(shape) = self.shapes.get(name) else {
            return value;
        };
        match (shape.ty, value) {
            (ShapeType::Structure, Value::Object(mut o)) => {
                let mut out = Map::new();
                for m in &shape.members {
                    if m.location != Location::Body {
                        continue;
                    }
                    if let Some(v) = o.remove(&m.name) {
                        if !v.is_null() {
                            out.insert(m.name.clone(), self.project(&m.shape, v));
                        }
                    }
                }
                Value::Object(out)
            }
            (ShapeType::List, Value::Array(items)) => match &shape.item {
                Some(item) => Value::Array(
                    items
                        .into_iter()
                        .filter(|v| !v.is_null())
                        .map(|v| self.project(item, v))
                        .collect(),
                ),
                None => Value::Array(items),
            },
            (ShapeType::Map, Value::Object(o)) => match &shape.item {
                Some(item) => Value::Object(
                    o.into_iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k, self.project(item, v)))
                        .collect(),
                ),
                None => Value::Object(o),
            },
            (_, v) => v,
        }
    }
}

fn shape_of(s: &Value) -> Shape {
    let ty = match s.get("type").and_then(Value::as_str).unwrap_or("") {
        "structure" => ShapeType::Structure,
        "list" => ShapeType::List,
        "map" => ShapeType::Map,
        "string" => ShapeType::String,
        "integer" => ShapeType::Integer,
        "long" => ShapeType::Long,
        "double" | "float" => ShapeType::Double,
        "boolean" => ShapeType::Boolean,
        "timestamp" => ShapeType::Timestamp,
        _ => ShapeType::Other,
    };
    let members = s
        .get("members")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, v)| Member {
                    name: name.clone(),
                    shape: v
                        .get("shape")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    location: match v.get("location").and_then(Value::as_str) {
                        Some("querystring") => Location::Query,
                        Some("uri") => Location::Uri,
                        Some("header") => Location::Header,
                        _ => Location::Body,
                    },
                    location_name: v
                        .get("locationName")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default();
    let strings = |key: &str| strings(s.get(key));
    let item = s
        .pointer("/member/shape")
        .or_else(|| s.pointer("/value/shape"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Shape {
        ty,
        members,
        required: strings("required"),
        item,
        values: strings("enum"),
        min: s.get("min").and_then(Value::as_i64),
        max: s.get("max").and_then(Value::as_i64),
        error_status: s
            .pointer("/error/httpStatusCode")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok()),
    }
}

/// The text items of a JSON list (none when it is not one).
pub(crate) fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn bounds(shape: &Shape, n: i64, what: &str) -> Result<(), String> {
    if let Some(min) = shape.min.filter(|m| n < *m) {
        return Err(format!("must have at least {min} {what}"));
    }
    if let Some(max) = shape.max.filter(|m| n > *m) {
        return Err(format!("must have at most {max} {what}"));
    }
    Ok(())
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_embedded_model_has_the_operations_kiln_serves() {
        let m = Model::get();
        for op in crate::ops::Op::ALL {
            let o = m
                .operation(op.name())
                .unwrap_or_else(|| panic!("{}", op.name()));
            assert_eq!(o.method, op.method().as_str(), "{}", op.name());
        }
        assert_eq!(m.error_status("ResourceNotFoundException"), Some(404));
    }

    #[test]
    fn requests_are_checked_with_the_field_named() {
        let m = Model::get();
        let ok = json!({"name": "a", "semanticVersion": "1.0.0", "platform": "Linux", "clientToken": "t", "newerField": 1});
        m.check("CreateComponentRequest", &ok, "").unwrap();
        let e = m
            .check("CreateComponentRequest", &json!({"name": 5}), "")
            .unwrap_err();
        assert_eq!(e.field, "name");
        let e = m
            .check(
                "CreateComponentRequest",
                &json!({"name": "a", "semanticVersion": "1.0.0", "platform": "Mac", "clientToken": "t"}),
                "",
            )
            .unwrap_err();
        assert_eq!(e.field, "platform");
        let e = m
            .check(
                "CreateComponentRequest",
                &json!({"semanticVersion": "1.0.0", "platform": "Linux", "clientToken": "t"}),
                "",
            )
            .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("name", "is required")
        );
    }

    #[test]
    fn responses_keep_only_the_models_members() {
        let m = Model::get();
        let v = m.project(
            "GetComponentResponse",
            json!({"requestId": "r", "secret": "x", "component": {"arn": "a", "internal": 1, "name": null}}),
        );
        assert_eq!(v, json!({"requestId": "r", "component": {"arn": "a"}}));
    }
}
