//! The one rule for partrain's versioned files (checkpoint `meta.json`, summary.json, flight
//! records, calibration and peak files): the format is checked by name first, then the version.
//! A reader takes every version from the oldest whose fields it still reads up to its own: a
//! field added later is optional and read with its default (as PyTorch's flight recorder versions
//! its fields), so only a change that old readers cannot follow raises `oldest`. A newer file,
//! or one older than `oldest`, is refused naming both numbers.

/// A file format's name and the versions its reader takes.
#[derive(Debug, Clone, Copy)]
pub struct Versioned {
    pub format: &'static str,
    /// The oldest version this reader still reads.
    pub oldest: u32,
    /// The version this partrain writes.
    pub current: u32,
    /// The version of a file that names none (files from before versions were written).
    pub unnamed: Option<u32>,
}

impl Versioned {
    /// A format read in exactly one version (no older file is readable).
    pub const fn only(format: &'static str, version: u32) -> Versioned {
        Versioned {
            format,
            oldest: version,
            current: version,
            unnamed: None,
        }
    }

    /// The document's version when its format and version are ones this reader takes.
    pub fn check(&self, doc: &serde_json::Value) -> Result<u32, String> {
        let format = doc.get("format").and_then(|f| f.as_str());
        let format = match (format, self.unnamed) {
            (None, Some(_)) => self.format,
            (f, _) => f.unwrap_or(""),
        };
        if format != self.format {
            return Err(format!("format `{format}`, expected `{}`", self.format));
        }
        let version = match doc.get("version") {
            None => self.unnamed,
            Some(v) => v.as_u64().map(|v| v as u32),
        };
        match version {
            Some(v) if (self.oldest..=self.current).contains(&v) => Ok(v),
            other => Err(format!(
                "{} version {} is not one this partrain reads (versions {}-{}{})",
                self.format,
                other.map_or("(none)".into(), |v| v.to_string()),
                self.oldest,
                self.current,
                match other {
                    Some(v) if v > self.current => "; a newer partrain wrote it",
                    _ => "",
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reader_takes_its_versions_and_refuses_others_by_name() {
        let v = Versioned {
            format: "f",
            oldest: 2,
            current: 3,
            unnamed: None,
        };
        assert_eq!(v.check(&json!({"format": "f", "version": 2})), Ok(2));
        assert_eq!(
            v.check(&json!({"format": "f", "version": 3, "later_field": 1})),
            Ok(3)
        );
        assert!(v
            .check(&json!({"format": "f", "version": 4}))
            .unwrap_err()
            .contains("newer partrain"));
        assert!(v
            .check(&json!({"format": "f", "version": 1}))
            .unwrap_err()
            .contains("versions 2-3"));
        assert!(v
            .check(&json!({"format": "g", "version": 3}))
            .unwrap_err()
            .contains("expected `f`"));
        assert!(v.check(&json!({"format": "f"})).is_err());
        let old = Versioned {
            unnamed: Some(1),
            oldest: 1,
            ..v
        };
        assert_eq!(old.check(&json!({})), Ok(1));
    }
}
