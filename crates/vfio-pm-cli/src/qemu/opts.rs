//! The two syntaxes QEMU accepts for an option's value: QemuOpts (`driver,key=value,...`, a
//! doubled comma standing for a literal one, a bare `key` meaning `key=on`) and JSON
//! (`{"driver":"vfio-pci",...}`, what libvirt passes to `-device`). Both become one ordered
//! list of key/value strings.

use std::fmt;

/// The longest value accepted (QEMU's own limits are far below; bounded work on any input).
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// The most properties one value may have.
pub const MAX_PROPS: usize = 512;

/// An option value, parsed: the properties in order (the implied first key filled in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Props {
    /// Key and value, in order.
    pub items: Vec<(String, String)>,
    /// The keys whose JSON value was a number (QEMU reads a number differently from a string
    /// for some properties: `"addr": 8` is devfn 8, `"addr": "8"` is slot 8).
    pub numbers: Vec<String>,
}

/// Why a value does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptsError {
    /// Too long or too many properties.
    TooLarge,
    /// An empty key (`,=x` or a leading `=`).
    EmptyKey,
    /// JSON that does not parse or is not an object of scalars.
    Json(String),
}

impl fmt::Display for OptsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => write!(
                f,
                "value longer than {MAX_VALUE_LEN} bytes or with more than {MAX_PROPS} properties"
            ),
            Self::EmptyKey => f.write_str("a property has an empty name"),
            Self::Json(e) => write!(f, "invalid JSON: {e}"),
        }
    }
}

impl Props {
    /// The last value of `key` (QEMU: a later occurrence wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when `key`'s last value was a JSON number.
    pub fn is_number(&self, key: &str) -> bool {
        self.numbers.iter().any(|k| k == key)
    }

    /// Parses `text` as JSON when it starts with `{`, else as QemuOpts whose first element,
    /// when it has no `=`, is the value of `implied` (e.g. `driver` for `-device`).
    pub fn parse(text: &str, implied: Option<&str>) -> Result<Self, OptsError> {
        if text.len() > MAX_VALUE_LEN {
            return Err(OptsError::TooLarge);
        }
        if text.trim_start().starts_with('{') {
            return Self::parse_json(text);
        }
        Self::parse_qemu_opts(text, implied)
    }

    fn parse_json(text: &str) -> Result<Self, OptsError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| OptsError::Json(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| OptsError::Json("not an object".into()))?;
        if obj.len() > MAX_PROPS {
            return Err(OptsError::TooLarge);
        }
        let mut props = Vec::with_capacity(obj.len());
        let mut numbers = Vec::new();
        for (k, v) in obj {
            if k.is_empty() {
                return Err(OptsError::EmptyKey); // as in QemuOpts (found by fuzz target qemu_args)
            }
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
                serde_json::Value::Number(n) => {
                    numbers.push(k.clone());
                    n.to_string()
                }
                other => {
                    return Err(OptsError::Json(format!(
                        "property {k:?} is {other}, not a string, number or boolean"
                    )))
                }
            };
            props.push((k.clone(), value));
        }
        Ok(Self {
            items: props,
            numbers,
        })
    }

    fn parse_qemu_opts(text: &str, implied: Option<&str>) -> Result<Self, OptsError> {
        let mut parts: Vec<String> = Vec::new();
        let mut cur = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    parts.push(std::mem::take(&mut cur));
                    if parts.len() > MAX_PROPS {
                        return Err(OptsError::TooLarge);
                    }
                }
            } else {
                cur.push(c);
            }
        }
        parts.push(cur);
        let mut props = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                Some(("", _)) => return Err(OptsError::EmptyKey),
                Some((k, v)) => props.push((k.to_string(), v.to_string())),
                None => match implied {
                    Some(key) if i == 0 => props.push((key.to_string(), part)),
                    _ => props.push((part, "on".to_string())),
                },
            }
        }
        Ok(Self {
            items: props,
            numbers: Vec::new(),
        })
    }
}

/// A QEMU boolean property value (`on`/`off`, `true`/`false`, `yes`/`no`).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" | "y" => Some(true),
        "off" | "false" | "no" | "n" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(p: &Props) -> Vec<(&str, &str)> {
        p.items
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn qemu_opts_with_implied_key_escapes_and_flags() {
        let p = Props::parse("vfio-pci,host=01:00.0,id=a,,b,x-flag", Some("driver")).unwrap();
        assert_eq!(
            kv(&p),
            [
                ("driver", "vfio-pci"),
                ("host", "01:00.0"),
                ("id", "a,b"),
                ("x-flag", "on")
            ]
        );
        let p = Props::parse("type=q35,accel=kvm,type=pc", Some("type")).unwrap();
        assert_eq!(p.get("type"), Some("pc"), "the last occurrence wins");
        assert_eq!(Props::parse("", Some("driver")).unwrap(), Props::default());
        assert_eq!(Props::parse("a,=b", None).unwrap_err(), OptsError::EmptyKey);
        let p = Props::parse("file=/a=b", None).unwrap();
        assert_eq!(p.get("file"), Some("/a=b"));
    }

    #[test]
    fn json_values_become_strings() {
        let p = Props::parse(
            r#"{"driver":"vfio-pci","host":"0000:01:00.0","addr":8,"multifunction":true}"#,
            Some("driver"),
        )
        .unwrap();
        assert_eq!(p.get("driver"), Some("vfio-pci"));
        assert_eq!(p.get("addr"), Some("8"));
        assert_eq!(p.get("multifunction"), Some("on"));
        assert!(p.is_number("addr") && !p.is_number("host"));
        for bad in [r#"{"a":[1]}"#, r#"{"a":{}}"#, "{", r#"{"a":null}"#] {
            assert!(
                matches!(Props::parse(bad, None), Err(OptsError::Json(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Props::parse(r#"{"":"vfio-pci"}"#, None),
            Err(OptsError::EmptyKey)
        );
        // Not an object: QemuOpts, whose bare first word is a flag.
        assert_eq!(Props::parse("[1]", None).unwrap().get("[1]"), Some("on"));
    }

    #[test]
    fn bounded() {
        let long = "a".repeat(MAX_VALUE_LEN + 1);
        assert_eq!(Props::parse(&long, None), Err(OptsError::TooLarge));
        let many = "a=1,".repeat(MAX_PROPS + 2);
        assert_eq!(Props::parse(&many, None), Err(OptsError::TooLarge));
        assert_eq!(parse_bool("on"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
