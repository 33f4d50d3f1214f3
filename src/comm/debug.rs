//! `PARTRAIN_DEBUG`: the words that switch on debugging aids (`collectives`: the check mode).

/// `PARTRAIN_DEBUG=collectives`: before every collective and message the ranks concerned compare
/// (kind, sequence number, element count, type, step) and stop at the first disagreement.
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        debug_words()
            .map(|w| w.contains(&"collectives".to_string()))
            .unwrap_or(false)
    })
}

/// The words of `PARTRAIN_DEBUG` (comma-separated); an unknown word is an error, not silence.
pub fn debug_words() -> anyhow::Result<Vec<String>> {
    let Ok(v) = std::env::var("PARTRAIN_DEBUG") else {
        return Ok(Vec::new());
    };
    let words: Vec<String> = v
        .split(',')
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    if let Some(bad) = words.iter().find(|w| w.as_str() != "collectives") {
        anyhow::bail!("PARTRAIN_DEBUG={v}: unknown word `{bad}` (expected: collectives)");
    }
    Ok(words)
}
