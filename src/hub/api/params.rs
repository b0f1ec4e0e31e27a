//! RPC-style parameters: `Action=…&InstanceId.1=…` from the query string
//! and/or a form body, with typed accessors that name the bad field.

use std::collections::BTreeMap;

use super::error::ApiError;

/// Every list parameter is bounded: Cloud Assistant accepts at most 100
/// instances per call, and we apply the same bound to any repeated field.
pub const MAX_LIST_ITEMS: usize = 100;
/// No single parameter value may exceed this (script content is 16 KiB
/// before base64; parameters JSON is bounded separately).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, Default, Clone)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    pub fn parse(query: &str, body: &[u8]) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()).chain(form_urlencoded::parse(body)) {
            if v.len() > MAX_VALUE_BYTES {
                return Err(ApiError::invalid(&k, format!("value is {} bytes, the limit is {MAX_VALUE_BYTES}", v.len())));
            }
            map.insert(k.into_owned(), v.into_owned());
        }
        Ok(Self { map })
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn require(&self, k: &str) -> Result<&str, ApiError> {
        self.get(k).ok_or_else(|| ApiError::missing(k))
    }

    pub fn string(&self, k: &str, max_len: usize) -> Result<Option<String>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) if v.chars().count() > max_len => Err(ApiError::invalid(k, format!("longer than {max_len} characters"))),
            Some(v) => Ok(Some(v.to_string())),
        }
    }

    pub fn int(&self, k: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let n: i64 = v.parse().map_err(|_| ApiError::invalid(k, format!("{v:?} is not an integer")))?;
        if n < min || n > max {
            return Err(ApiError::invalid(k, format!("{n} is outside the range {min}..={max}")));
        }
        Ok(Some(n))
    }

    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(k, format!("{v:?} is not true or false"))),
        }
    }

    /// `Name.1`, `Name.2`, … (the classic SDK form), or a JSON array in
    /// `Name` (the form some tea SDK versions send for "shrink" fields).
    pub fn list(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let mut out: Vec<(usize, String)> = Vec::new();
        let prefix = format!("{name}.");
        for (k, v) in &self.map {
            if let Some(idx) = k.strip_prefix(&prefix) {
                let Ok(i) = idx.parse::<usize>() else { continue };
                if i == 0 || i > MAX_LIST_ITEMS {
                    return Err(ApiError::invalid(name, format!("index {i} is outside 1..={MAX_LIST_ITEMS}")));
                }
                out.push((i, v.clone()));
            }
        }
        if out.is_empty()
            && let Some(v) = self.get(name)
        {
            if v.starts_with('[') {
                let arr: Vec<String> = serde_json::from_str(v).map_err(|e| ApiError::invalid(name, e))?;
                if arr.len() > MAX_LIST_ITEMS {
                    return Err(ApiError::invalid(name, format!("{} items, the limit is {MAX_LIST_ITEMS}", arr.len())));
                }
                return Ok(arr);
            }
            return Ok(vec![v.to_string()]);
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, v)| v).filter(|v| !v.is_empty()).collect())
    }

    /// `Tag.N.Key` / `Tag.N.Value` pairs.
    pub fn tags(&self, name: &str) -> Result<Vec<(String, String)>, ApiError> {
        let mut out = Vec::new();
        for i in 1..=MAX_LIST_ITEMS {
            let key = self.get(&format!("{name}.{i}.Key"));
            let value = self.get(&format!("{name}.{i}.Value")).unwrap_or("");
            match key {
                Some(k) if k.len() > 128 => return Err(ApiError::invalid(&format!("{name}.{i}.Key"), "longer than 128 characters")),
                Some(k) => out.push((k.to_string(), value.to_string())),
                None => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_in_both_forms_and_bounds() {
        let p = Params::parse("InstanceId.2=b&InstanceId.1=a", b"").unwrap();
        assert_eq!(p.list("InstanceId").unwrap(), vec!["a", "b"]);
        let p = Params::parse("InstanceId=%5B%22x%22%2C%22y%22%5D", b"").unwrap();
        assert_eq!(p.list("InstanceId").unwrap(), vec!["x", "y"]);
        let p = Params::parse("InstanceId.101=a", b"").unwrap();
        let e = p.list("InstanceId").unwrap_err();
        assert!(e.message.contains("1..=100"), "{}", e.message);
    }

    #[test]
    fn ints_name_field_and_range() {
        let p = Params::parse("Timeout=99999999", b"").unwrap();
        let e = p.int("Timeout", 10, 86400).unwrap_err();
        assert_eq!(e.code, "InvalidParameter.Timeout");
        assert!(e.message.contains("10..=86400"));
        let p = Params::parse("", b"Timeout=abc").unwrap();
        assert!(p.int("Timeout", 10, 86400).unwrap_err().message.contains("not an integer"));
    }
}
